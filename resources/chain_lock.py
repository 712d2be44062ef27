"""One writer of the round chain per home: an OS file lock next to the database.

Round k+1 builds on round k's checkpoint and takes prompts that no earlier round took, so two
processes working on rounds of one home at once would fork the chain. Every round step (and every
`auf` command that runs rounds) holds `round-chain.lock` in the home while it works. The lock is
an `flock`: the kernel releases it when the holder exits, however it exits, so a killed run never
leaves a stale lock behind. The lock file records who holds it, for the message the next one gets.

The Dagster run queue keeps round runs from starting at once (the `auf/chain` tag limit in the
instance's dagster.yaml); this lock is what stops everything that does not pass through the queue:
`auf demo`, a single asset materialised from the UI, a second code location on the same home.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "round-chain.lock"

# Locks this process holds, by path: a round step run in-process by `auf demo` (which holds the
# lock for the whole command) must not wait for itself.
_held: dict[Path, int] = {}


class ChainBusy(RuntimeError):
    """Another process is working on this home's round chain."""


def lock_path(root: Path) -> Path:
    return Path(root) / LOCK_NAME


def holder(root: Path) -> dict:
    """Who holds (or last held) the lock, as recorded in the lock file."""
    try:
        return json.loads(lock_path(root).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    what = info.get("what", "a process")
    return f"{what} (pid {info.get('pid')} on {info.get('host')}, since {since})"


@contextlib.contextmanager
def round_chain(root: Path, what: str, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the round-chain lock of the home `root` while the block runs.

    With `wait_s` > 0 it waits that long for the holder to finish; then (or at once) it raises
    `ChainBusy` naming the holder. Re-entrant within one process.
    """
    path = lock_path(root).resolve()
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ChainBusy(
                        f"{_describe(holder(root))} is working on the rounds of this home "
                        f"({Path(root)}); {what} would fork the round chain, so it stops. Run it "
                        "again when that has finished."
                    ) from None
                time.sleep(0.5)
        info = {
            "what": what,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _held[path] = fd
        try:
            yield
        finally:
            del _held[path]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
