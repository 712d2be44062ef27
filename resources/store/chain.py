"""One writer of the round chain on Postgres: a session-level advisory lock.

The lock is held by a connection of its own for as long as a round step works; the server
releases it when that connection ends, however the holder ends (a killed pod, kill -9), so a
dead writer never leaves a stale lock. Who holds it is recorded in `auf_chain_holders` (by the
server process id of the holding connection) for the message the next writer gets. The DuckDB
store keeps the file lock of `resources.chain_lock`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

from resources.chain_lock import ChainBusy
from resources.store.postgres import connect_once, redact

_LOCK_KEY = "auf:round-chain"

# Postgres stores whose chain lock this process holds: a step run in-process inside a command
# that already holds it must not wait for itself.
_held: set[str] = set()


def _holder(con) -> str:
    row = con.execute(
        "SELECT h.what, h.pid, h.host, h.since FROM auf_chain_holders h JOIN pg_locks l "
        "ON l.pid = h.backend_pid AND l.locktype = 'advisory' AND l.granted "
        "ORDER BY h.since DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return "another process"
    what, pid, host, since = row
    return f"{what} (pid {pid} on {host}, since {since:%Y-%m-%d %H:%M:%S} UTC)"


@contextlib.contextmanager
def postgres_round_chain(url: str, what: str, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the chain's advisory lock on the server at `url` while the block runs; `ChainBusy`
    naming the holder when another process holds it (after waiting `wait_s`)."""
    if url in _held:
        yield
        return
    con = connect_once(url)
    try:
        con.execute(
            "CREATE TABLE IF NOT EXISTS auf_chain_holders (backend_pid INTEGER PRIMARY KEY, "
            "what TEXT, pid INTEGER, host TEXT, since TIMESTAMP)"
        )
        deadline = time.monotonic() + wait_s
        lock = "SELECT pg_try_advisory_lock(hashtext(%s))"
        while not con.execute(lock, [_LOCK_KEY]).fetchone()[0]:
            if time.monotonic() >= deadline:
                raise ChainBusy(
                    f"{_holder(con)} is working on the rounds of the store at {redact(url)}; "
                    f"{what} would fork the round chain, so it stops. Run it again when that "
                    "has finished."
                )
            time.sleep(0.5)
        con.execute(
            "INSERT INTO auf_chain_holders VALUES (pg_backend_pid(), %s, %s, %s, "
            "now() AT TIME ZONE 'utc') ON CONFLICT (backend_pid) DO UPDATE SET "
            "what = EXCLUDED.what, pid = EXCLUDED.pid, host = EXCLUDED.host, "
            "since = EXCLUDED.since",
            [what, os.getpid(), socket.gethostname()],
        )
        _held.add(url)
        try:
            yield
        finally:
            _held.discard(url)
            with contextlib.suppress(Exception):
                con.execute("DELETE FROM auf_chain_holders WHERE backend_pid = pg_backend_pid()")
                con.execute("SELECT pg_advisory_unlock(hashtext(%s))", [_LOCK_KEY])
    finally:
        con.close()
