"""Where a model runs, and how many CPU threads it takes: `choose_device`, which every model
user calls (the model resources, the feature encoder, the reward-model judge and ensemble, DPO
and reward-model training, policy scoring). No Dagster here.

GPUs. `auto` and `cuda` are the GPU this process claimed: with several model steps running at
once in separate processes on one machine, each claims a GPU of its own through a lock file
(released when the process ends), so they do not all land on GPU 0. `cuda:N` is GPU N as
given; `cpu` the CPU. `auto` is the CPU on a machine without CUDA.

CPU threads. torch starts as many threads as the machine has cores, whatever share of them the
process really has; three model processes on two cores then fight over them. A model-using
process takes a CPU claim (a lock file, released when it ends) and sizes torch's threads once:
the CPUs it may use (its affinity, capped by the cgroup's quota) divided among the processes that
hold a CPU claim on the machine at that moment, at least one. `AUF_TORCH_THREADS` overrides
that; so does `OMP_NUM_THREADS`, which torch has already taken at start.

The claims live in `AUF_GPU_CLAIMS` (default `<tmp>/auf-gpu-claims`): the machine's, not a
home's, so the rounds of several homes on one machine share out its GPUs and CPUs too.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CLAIMS_ENV = "AUF_GPU_CLAIMS"
THREADS_ENV = "AUF_TORCH_THREADS"
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_CPU_CLAIM_GLOB = "cpu-*.lock"

# This process's claims: (pid, value, open locked file). The pid tells a forked child, which
# inherits the parent's, to take its own.
_LOCK = threading.RLock()  # one claim per process, however many threads ask at once
_CLAIMED_GPU: tuple[int, int, IO | None] | None = None
_CPU_CLAIM: tuple[int, Path, IO] | None = None
_THREADS: tuple[int, int] | None = None


def check_device(device: str) -> str:
    """`device` itself, or a ValueError that names the accepted spellings."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"device must be {DEVICE_NAMES}; got {device!r}")
    return device


def wants_gpu(device: str) -> bool:
    """Whether `device` runs on a GPU here (`auto`: when CUDA is available); claims nothing."""
    import torch

    if check_device(device) == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def choose_device(device: str = "auto") -> torch.device:
    """The torch device for `device` (auto, cpu, cuda or cuda:N), with this process's GPU and
    CPU claims taken and torch's CPU threads sized (see the module's text). Raises before any
    model loads when the name is wrong or the GPU asked for is not here."""
    import torch

    check_device(device)
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        target = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here")
    elif device in ("auto", "cuda"):
        target = torch.device(f"cuda:{claim_gpu()}")
    else:
        index, count = int(device.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"device {device!r} requested but this machine has {count} GPU(s)")
        target = torch.device(device)
    size_torch_threads()
    return target


def claims_dir() -> Path:
    """The machine's claims folder (`AUF_GPU_CLAIMS`, default `<tmp>/auf-gpu-claims`)."""
    folder = Path(os.environ.get(CLAIMS_ENV) or Path(tempfile.gettempdir()) / "auf-gpu-claims")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- GPUs -------------------------------------------------------------------------------------


def claim_gpu() -> int:
    """The GPU this process works on: the first one no other process on the machine claimed.

    When every GPU is claimed the one with the most free memory is shared. One visible GPU (a
    Kubernetes pod given one GPU, or `CUDA_VISIBLE_DEVICES`) is always GPU 0.
    """
    global _CLAIMED_GPU
    import torch

    with _LOCK:
        if _CLAIMED_GPU is not None and _CLAIMED_GPU[0] == os.getpid():
            return _CLAIMED_GPU[1]
        count = torch.cuda.device_count()
        if count <= 1:
            _CLAIMED_GPU = (os.getpid(), 0, None)
            return 0
        folder = claims_dir()
        for index in range(count):
            handle = open(folder / f"cuda{index}.lock", "a+")  # noqa: SIM115 - held for the process
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _CLAIMED_GPU = (os.getpid(), index, handle)
            log.info("claimed GPU %d of %d", index, count)
            return index
        free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
        index = max(range(count), key=lambda i: free[i])
        log.warning("all %d GPUs are claimed; sharing GPU %d (most free memory)", count, index)
        _CLAIMED_GPU = (os.getpid(), index, None)
        return index


# -- CPU claims -------------------------------------------------------------------------------


def take_cpu_claim(folder: Path) -> tuple[Path, IO]:
    """A new CPU claim in `folder`: a lock file held while the returned file stays open (the
    kernel drops the lock when the process ends, however it ends)."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # Locked under a name the counters skip, then renamed: a claim is never seen unlocked.
    pending = folder / f".cpu-{token}.pending"
    handle = open(pending, "a+")  # noqa: SIM115 - held for the process
    fcntl.flock(handle, fcntl.LOCK_EX)
    claim = folder / f"cpu-{token}.lock"
    os.replace(pending, claim)
    return claim, handle


def count_cpu_claims(folder: Path) -> int:
    """How many processes hold a CPU claim in `folder` now; removes the files of dead ones."""
    held = 0
    for path in folder.glob(_CPU_CLAIM_GLOB):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # another counter removed it meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held += 1
        else:
            path.unlink(missing_ok=True)  # its process is gone
        finally:
            os.close(fd)
    return held


# -- CPU threads ------------------------------------------------------------------------------


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The CPUs this process's cgroup quota allows (the tightest along its cgroup's path, v2
    `cpu.max` or v1 `cpu.cfs_quota_us`), or None without a quota. `root`: where `/proc` and
    `/sys` are (a test's folder)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # v2, the unified hierarchy
            for folder in _cgroup_folders(root / "sys/fs/cgroup", path):
                limits += _v2_limit(folder / "cpu.max")
        elif "cpu" in controllers.split(","):
            for mount in ("cpu,cpuacct", "cpu"):
                for folder in _cgroup_folders(root / "sys/fs/cgroup" / mount, path):
                    limits += _v1_limit(folder)
    return min(limits) if limits else None


def _cgroup_folders(base: Path, path: str) -> list[Path]:
    """`base/path` and its parents up to `base`. Inside a container the path names the host's
    folders, which are not there: the container's own cgroup is mounted at `base` itself."""
    folder = base / path.strip("/")
    out = [folder]
    while folder != base and base in folder.parents:
        folder = folder.parent
        out.append(folder)
    return [f for f in out if f.is_dir()]


def _v2_limit(path: Path) -> list[float]:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return []
    return [] if quota == "max" else [int(quota) / int(period)]


def _v1_limit(folder: Path) -> list[float]:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []


def available_cpus(root: Path = Path("/"), affinity: Collection[int] | None = None) -> float:
    """The CPUs this process may use: its affinity (`os.sched_getaffinity`), capped by the
    cgroup quota. `affinity` and `root` replace the process's own (tests)."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cpus = float(len(affinity) if affinity is not None else os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    return min(cpus, limit) if limit is not None else cpus


def share_threads(cpus: float, claims: int) -> int:
    """Threads for one of `claims` processes sharing `cpus`: an equal share, rounded down (an
    oversubscribed core is what this avoids), at least one."""
    return max(1, math.floor(cpus / max(1, claims)))


def _explicit_threads() -> int | None:
    """`AUF_TORCH_THREADS` when set (a bad value fails here, naming it), else None."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"{THREADS_ENV} must be a whole number of threads (1 or more); got {value!r}"
        )
    return int(value)


def size_torch_threads() -> int:
    """Take this process's CPU claim and set torch's threads (see the module's text), once per
    process; returns the number of threads."""
    global _THREADS
    import torch

    with _LOCK:
        if _THREADS is not None and _THREADS[0] == os.getpid():
            return _THREADS[1]
        explicit = _explicit_threads()  # a bad value fails before the claim is taken
        claims = _claim_and_count()
        if explicit is not None:
            threads, why = explicit, f"{THREADS_ENV}={explicit}"
            torch.set_num_threads(threads)
        elif os.environ.get("OMP_NUM_THREADS", "").strip():
            # torch took its threads from it at start; whoever set it meant it
            threads, why = torch.get_num_threads(), "OMP_NUM_THREADS is set"
        else:
            cpus = available_cpus()
            threads = share_threads(cpus, claims)
            why = f"{cpus:g} CPUs shared by {claims} model process(es) holding a CPU claim"
            torch.set_num_threads(threads)
        _THREADS = (os.getpid(), threads)
        log.info("torch uses %d CPU thread(s): %s", threads, why)
        return threads


def _claim_and_count() -> int:
    """This process's CPU claim taken, the claims held on the machine counted (itself too). A
    claims folder it cannot write (another user's) leaves it unclaimed, counting itself."""
    global _CPU_CLAIM
    try:
        folder = claims_dir()
        if _CPU_CLAIM is None or _CPU_CLAIM[0] != os.getpid():
            path, handle = take_cpu_claim(folder)
            _CPU_CLAIM = (os.getpid(), path, handle)
        return count_cpu_claims(folder)
    except OSError as exc:
        log.warning("cannot take a CPU claim (%s): sizing torch's threads as if alone", exc)
        return 1
