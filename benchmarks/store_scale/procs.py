"""Real subprocesses on one store: starting them set up, releasing them together, collecting
what each measured.

A child does its start-up (imports, the store's first connection, test data) first, touches its
`ready` file and waits for its `go` file, so what it measures starts when the parent says. A
holder touches `holding` once it holds what it holds; a looping child stops starting new work
once its `stop` file exists. Each child writes its result as JSON and its output to a log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench_store_scale.py"


def child_env(home: Path, url: str) -> dict[str, str]:
    """The environment of a child on one store: its home, and the Postgres URL or none."""
    env = os.environ.copy()
    env["AUF_HOME"] = str(home)
    env.pop("AUF_STORE_URL", None)
    if url:
        env["AUF_STORE_URL"] = url
    return env


def wait_for(path: Path, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait until `path` exists (False after `timeout`, or when `proc` has ended without it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc is not None and proc.poll() is not None:
            return path.exists()
        time.sleep(0.05)
    return False


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    ready: Path
    go: Path
    holding: Path
    stop: Path


class Children:
    """Children of one phase of the benchmark, on one store (`env`), with files under `work`."""

    def __init__(self, args: argparse.Namespace, work: Path, env: dict[str, str]):
        self.args, self.work, self.env = args, work, env
        self._n = 0

    def start(self, name: str, role: str, *extra: str, app: str = "") -> Child:
        args, work, i = self.args, self.work, self._n
        self._n += 1
        files = {k: work / f"{i}.{k}" for k in ("ready", "go", "holding", "stop")}
        cmd = [
            sys.executable,
            str(SCRIPT),
            "--child",
            role,
            "--result",
            str(work / f"{name}.json"),
            "--members",
            str(args.members),
            "--round-size",
            str(args.round_size),
            "--feature-dim",
            str(args.feature_dim),
            "--response-bytes",
            str(args.response_bytes),
            "--encoder",
            args.encoder,
            "--seed",
            str(args.seed),
            "--capacity",
            str(args.capacity),
            *(f"--{k}={v}" for k, v in files.items()),
            *extra,
        ]
        env = dict(self.env)
        env["PGAPPNAME"] = app or f"auf-bench-{name}"  # who waits, in pg_stat_activity
        log = open(work / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return Child(name, proc, files["ready"], files["go"], files["holding"], files["stop"])

    def run(
        self,
        first: list[Child],
        then: list[Child] = (),
        timeout: float = 600.0,
        until: list[Child] = (),
    ) -> dict:
        """Release `first` (and wait until they hold, when `then` follows), then `then`; when
        every child of `until` has ended, tell the others to stop. All are set up first."""
        everyone = [*first, *then]
        for c in everyone:
            if not wait_for(c.ready, 600, c.proc):
                print(f"  {c.name} did not start: see {self.work / (c.name + '.log')}", flush=True)
        for c in first:
            c.go.touch()
        if then:
            for c in first:
                wait_for(c.holding, 600, c.proc)
            for c in then:
                c.go.touch()
        deadline = time.monotonic() + timeout
        if until:
            while time.monotonic() < deadline and any(c.proc.poll() is None for c in until):
                time.sleep(0.1)
            for c in everyone:
                c.stop.touch()
        out = {}
        for c in everyone:
            try:
                c.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
            path = self.work / f"{c.name}.json"
            out[c.name] = (
                json.loads(path.read_text())
                if path.exists()
                else {
                    "ok": False,
                    "error": f"no result (exit {c.proc.returncode}; killed after "
                    f"{timeout:.0f} s, or see {c.name}.log)",
                }
            )
        return out
