"""Where models live: one per GPU at a time, freed explicitly, loaded in the configured dtype,
a GPU of its own for each concurrent step, and torch threads sized to the process's CPU share."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from auf_assets.core import devices
from auf_assets.core.judging import judge_messages
from auf_assets.core.policy import PolicyScorer
from auf_assets.core.settings import TrainingSettings
from auf_assets.core.training import TrainingError, train_reward_model
from resources.loaded_models import LoadedModels
from resources.model_loading import load_tokenizer_and_model, weights_dtype
from resources.vllm_lm import _stop_vllm

ROOT = Path(__file__).resolve().parents[1]


def test_one_model_per_gpu_and_an_lru_on_the_cpu():
    freed: list[str] = []
    cache = LoadedModels(cpu_slots=2)

    def get(name, slot):
        return cache.get((name,), slot, lambda: f"model {name}", freed.append)

    assert get("a", "cuda:0") == "model a"
    assert get("a", "cuda:0") == "model a" and freed == []  # cached
    get("b", "cuda:1")  # another GPU: both stay
    get("c", "cuda:0")  # same GPU: a goes first (two engines would not fit)
    assert freed == ["model a"]
    get("x", None), get("y", None), get("x", None), get("z", None)  # CPU: LRU of 2
    assert freed == ["model a", "model y"]
    assert cache.release("cuda") == 2 and freed[-2:] == ["model b", "model c"]
    assert get("x", None) == "model x"  # CPU models survive a GPU release


def test_weights_load_in_the_configured_dtype(tiny_lm_dir):
    _, bf16 = load_tokenizer_and_model(str(tiny_lm_dir), "causal", "cpu", None, "bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    # `auto` on the CPU: fp32 weights under bf16 autocast (measured faster than bf16 weights).
    _, auto = load_tokenizer_and_model(str(tiny_lm_dir), "causal", "cpu", None, "auto")
    assert next(auto.parameters()).dtype == torch.float32
    assert weights_dtype("auto", torch.device("cpu")) == torch.float32


def _python(code: str) -> subprocess.Popen:
    """`code` in a fresh interpreter that imports this checkout (not another install)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _output(code: str) -> str:
    proc = _python(code)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out.strip()


def test_concurrent_steps_claim_different_gpus(tmp_path, monkeypatch):
    """Two processes on a 2-GPU machine (of one home or two): the second does not land on GPU 0."""
    monkeypatch.setenv("AUF_GPU_CLAIMS", str(tmp_path / "claims"))
    monkeypatch.setattr(devices, "_CLAIMED_GPU", None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.claim_gpu() == 0
    child = """
        import torch
        torch.cuda.device_count = lambda: 2
        torch.cuda.mem_get_info = lambda i: (1, 1)
        from auf_assets.core import devices
        print(devices.claim_gpu())
        """
    assert _output(child) == "1"


def test_a_device_name_is_checked_before_anything_is_claimed():
    for wrong in ("gpu", "cuda:", "CUDA", "cuda:x", " cpu"):
        with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
            devices.choose_device(wrong)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            devices.choose_device("cuda:0")


def test_the_cpus_are_the_affinity_capped_by_the_cgroup_quota(tmp_path):
    def fake_root(name: str, cgroup: str, files: dict[str, str]) -> Path:
        root = tmp_path / name
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/self/cgroup").write_text(cgroup)
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        return root

    eight = range(8)
    nothing = fake_root("none", "0::/\n", {})
    assert devices.cgroup_cpu_limit(nothing) is None
    assert devices.available_cpus(nothing, affinity=eight) == 8
    assert devices.available_cpus(tmp_path / "no-proc-at-all", affinity={0, 3}) == 2
    # v2: the tightest cpu.max along the cgroup's path; "max" is no limit
    v2 = fake_root(
        "v2",
        "0::/user.slice/job\n",
        {
            "sys/fs/cgroup/user.slice/job/cpu.max": "350000 100000\n",
            "sys/fs/cgroup/user.slice/cpu.max": "250000 100000\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
        },
    )
    assert devices.cgroup_cpu_limit(v2) == 2.5
    assert devices.available_cpus(v2, affinity=eight) == 2.5
    assert devices.available_cpus(v2, affinity={5, 6}) == 2  # the affinity is tighter
    unlimited = fake_root("v2-max", "0::/a\n", {"sys/fs/cgroup/a/cpu.max": "max 100000\n"})
    assert devices.cgroup_cpu_limit(unlimited) is None
    # v1 in a container: the path names the host's folders; the container's own is the mount
    v1 = fake_root(
        "v1",
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        {
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "300000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert devices.available_cpus(v1, affinity=eight) == 3
    v1_free = fake_root(
        "v1-free",
        "3:cpu:/\n",
        {
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
        },
    )
    assert devices.cgroup_cpu_limit(v1_free) is None


def test_the_affinity_is_the_process_own():
    child = """
        import os
        from auf_assets.core import devices
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(devices.available_cpus())
        """
    assert float(_output(child)) == 1.0


def test_the_threads_are_an_equal_share_rounded_down_and_at_least_one():
    assert devices.share_threads(2, 1) == 2
    assert devices.share_threads(2, 2) == 1
    assert devices.share_threads(2, 3) == 1  # never none
    assert devices.share_threads(16, 3) == 5
    assert devices.share_threads(2.5, 1) == 2
    assert devices.share_threads(8, 0) == 8


def test_cpu_claims_are_counted_while_their_processes_hold_them(tmp_path):
    claims = [devices.take_cpu_claim(tmp_path) for _ in range(3)]
    assert devices.count_cpu_claims(tmp_path) == 3
    path, handle = claims.pop()
    handle.close()  # as when its process ends
    assert devices.count_cpu_claims(tmp_path) == 2
    assert not path.exists()  # a dead claim's file is removed by whoever counts
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p, _ in claims)


@pytest.mark.process
def test_a_claim_goes_when_its_process_is_killed(tmp_path):
    child = _python(
        f"""
        import time
        from pathlib import Path
        from auf_assets.core import devices
        claim = devices.take_cpu_claim(Path({str(tmp_path)!r}))  # held while it is open
        print("claimed", flush=True)
        time.sleep(300)
        """
    )
    try:
        assert child.stdout.readline().strip() == "claimed"
        assert devices.count_cpu_claims(tmp_path) == 1
        child.kill()
        child.wait(timeout=60)
        assert devices.count_cpu_claims(tmp_path) == 0
        assert list(tmp_path.iterdir()) == []
    finally:
        child.kill()
        child.communicate()


def test_the_judge_prompt_is_bounded_too():
    user = judge_messages("honesty", "Q" + "q" * 48 + "?", "r", max_prompt_chars=10)[1]["content"]
    # The start and the end (the question asked last), the middle cut (as in generation).
    assert "Qqqqqqqq\n\n[... 40 characters of the prompt not shown here ...]\n\nq?" in user
    assert "q" * 8 not in user


def test_a_vllm_engine_is_shut_down_when_freed():
    calls = []

    class Core:
        def shutdown(self):
            calls.append("shutdown")

    class Engine:
        engine_core = Core()

    class FakeLLM:
        llm_engine = Engine()

    cache = LoadedModels()
    cache.get(("v1",), "vllm:cpu", FakeLLM, _stop_vllm)
    cache.get(("v2",), "vllm:cpu", FakeLLM, _stop_vllm)
    assert calls == ["shutdown"]


@pytest.fixture()
def new_process(tmp_path, monkeypatch):
    """This process as if it had not chosen a device yet, its claims in a folder of its own;
    torch's threads are put back afterwards."""
    claims = tmp_path / "claims"
    monkeypatch.setenv("AUF_GPU_CLAIMS", str(claims))
    monkeypatch.delenv("AUF_TORCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "_THREADS", None)
    monkeypatch.setattr(devices, "_CPU_CLAIM", None)
    before = torch.get_num_threads()
    yield claims
    torch.set_num_threads(before)


def test_training_and_policy_scoring_take_a_share_of_the_cpus(
    new_process, tiny_chat_lm_dir, caplog, monkeypatch
):
    """Beside another process that holds a CPU claim, policy scoring and training each go
    through choose_device: a claim of their own, and half the CPUs for torch, logged once."""
    new_process.mkdir()
    other = devices.take_cpu_claim(new_process)
    half = devices.share_threads(devices.available_cpus(), 2)
    torch.set_num_threads(half + 1)  # what it was does not stay
    with caplog.at_level(logging.INFO, logger=devices.__name__):
        PolicyScorer(tiny_chat_lm_dir, device="cpu", max_length=64)
        PolicyScorer(tiny_chat_lm_dir, device="cpu", max_length=64)
    assert devices.count_cpu_claims(new_process) == 2
    assert torch.get_num_threads() == half
    assert sum("torch uses" in r.getMessage() for r in caplog.records) == 1  # once a process

    # Both processes end; a new one trains.
    devices._CPU_CLAIM[2].close()
    other[1].close()
    monkeypatch.setattr(devices, "_THREADS", None)
    monkeypatch.setattr(devices, "_CPU_CLAIM", None)
    with pytest.raises(TrainingError):  # no base model: fails after the device was chosen
        train_reward_model("/nowhere", [], TrainingSettings(device="cpu"), "unused")
    assert devices.count_cpu_claims(new_process) == 1
    assert torch.get_num_threads() == devices.share_threads(devices.available_cpus(), 1)


def test_an_explicit_thread_count_wins_and_a_bad_one_is_named(new_process, monkeypatch):
    monkeypatch.setenv("AUF_TORCH_THREADS", "many")
    with pytest.raises(ValueError, match="AUF_TORCH_THREADS must be a whole number"):
        devices.choose_device("cpu")
    assert not new_process.exists() or not list(new_process.iterdir())  # nothing claimed
    monkeypatch.setenv("AUF_TORCH_THREADS", "3")
    devices.choose_device("cpu")
    assert torch.get_num_threads() == 3
    # OMP_NUM_THREADS, which torch reads at start, is kept as it is
    monkeypatch.setattr(devices, "_THREADS", None)
    monkeypatch.delenv("AUF_TORCH_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    devices.choose_device("cpu")
    assert torch.get_num_threads() == 2


def test_a_claims_folder_that_cannot_be_written_leaves_the_process_alone(
    new_process, tmp_path, monkeypatch, caplog
):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("AUF_GPU_CLAIMS", str(tmp_path / "a-file" / "claims"))
    with caplog.at_level(logging.WARNING, logger=devices.__name__):
        assert devices.choose_device("cpu") == torch.device("cpu")
    assert "cannot take a CPU claim" in caplog.text
    assert torch.get_num_threads() == devices.share_threads(devices.available_cpus(), 1)
