"""What each child process does on the store, and how long it waited for locks.

Roles (one process each):

- `round`: a round-step writer. Whole rounds of the round assets' store calls
  (`traffic.round_traffic`), each asset's calls holding the store's round-chain lock as
  `holds_round_chain` does (the home's file lock on DuckDB, the advisory lock on Postgres).
- `labels`: `auf labels import FILE`: `import_label_file` of one label file, then the label
  status the command prints, one file after the other.
- `release`: a release build: `build_release` (every round's pairs, responses, judge scores,
  reward models and usage; the Parquet shards; the release row).
- `sensor`: a sensor tick: the round chain's report (`chain_report`), the unused-prompt count and
  the label status, every `--interval` seconds.

A child does `--count` operations, or with a `--stop` file keeps going until it exists (at least
`--count`). Every operation is timed and its failure recorded (the child carries on). Lock
waits: on DuckDB the time the store's connection retries spent on a file another process held
(counted in the child); on Postgres the parent samples the server's lock waits
(`concurrency.LockSampler`), and the round writer's time to take the chain lock is counted here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

from benchmarks.store_scale.procs import wait_for
from benchmarks.store_scale.synth import Synth
from benchmarks.store_scale.traffic import round_traffic


class FileLockWaits:
    """Time the DuckDB store spent retrying a file another process held: from the first refused
    open to the open that succeeded (or to the error that ended the retries)."""

    def __init__(self):
        self.wait_s = 0.0
        self.retries = 0
        self._since: float | None = None

    def install(self) -> None:
        import duckdb

        real = duckdb.connect

        def connect(*a, **k):
            t0 = time.perf_counter()
            try:
                con = real(*a, **k)
            except duckdb.IOException as exc:
                if "lock" in str(exc).lower():
                    self.retries += 1
                    if self._since is None:
                        self._since = t0
                raise
            self.settle()
            return con

        duckdb.connect = connect  # the store calls duckdb.connect through the module

    def settle(self) -> None:
        if self._since is not None:
            self.wait_s += time.perf_counter() - self._since
            self._since = None


class TimedStore:
    """The store, with the time spent in its public methods added up (for `build_release`)."""

    def __init__(self, store):
        self._store = store
        self.seconds = 0.0

    def __getattr__(self, name: str):
        value = getattr(self._store, name)
        if name.startswith("_") or not callable(value):
            return value

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return value(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def _round_op(args: argparse.Namespace, store, waits: dict):
    seed = args.seed + 1000 + args.first_round  # ids must not repeat the parent's
    synth = Synth(seed, args.members, args.round_size, args.response_bytes, stream_mb=8)

    @contextlib.contextmanager
    def chain(step: str):
        t0 = time.perf_counter()
        with store.round_chain(f"bench round writer ({step})"):
            waits["chain_s"] += time.perf_counter() - t0
            yield

    guard = (lambda step: contextlib.nullcontext()) if args.no_chain else chain

    def op(i: int) -> dict:
        index = args.first_round + i
        return round_traffic(
            store, synth, index, args.encoder, args.feature_dim, args.capacity, step=guard
        )

    return op


def _labels_op(args: argparse.Namespace, store):
    from auf_assets.label_inbox import import_label_file, label_status
    from resources.labelling import labelling_from_env

    settings = labelling_from_env()
    files = sorted(Path(args.label_dir).glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no label files in {args.label_dir}")

    def op(i: int) -> dict:
        path = files[(args.label_offset + i) % len(files)]
        outcome = import_label_file(path, store, settings, keep_original=True)
        if outcome.status not in ("imported", "already_imported"):
            raise RuntimeError(f"{path.name}: {outcome.status}: {outcome.problems[:3]}")
        label_status(store, settings)  # what the command prints after the import
        return {"file": path.name, "status": outcome.status, "new_labels": outcome.new_labels}

    return op


def _release_op(store):
    from auf_assets.release import PreferenceDatasetConfig, build_release

    def op(i: int) -> dict:
        timed = TimedStore(store)
        built = build_release(timed, PreferenceDatasetConfig(), log=lambda m: None, warn=print)
        return {
            "store_s": timed.seconds,
            "pairs": built["rows"]["default"],
            "rounds": len(built["rounds"]),
        }

    return op


def _sensor_op(store):
    from auf_assets.label_inbox import label_status
    from auf_assets.round_chain import chain_report
    from resources.labelling import labelling_from_env

    settings = labelling_from_env()

    def op(i: int) -> dict:
        report = chain_report(store)
        store.unused_prompt_count()
        store.count_rows("prompts")
        label_status(store, settings)
        return {"rounds": len(report)}

    return op


def _sleep_unless(stop: Path | None, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (stop and stop.exists()):
        time.sleep(0.05)


def child_main(args: argparse.Namespace) -> int:
    """One child process: set up, wait for the go, do its operations, write its result."""
    from resources.store import Store

    file_waits = FileLockWaits()
    file_waits.install()
    store = Store(lock_timeout_s=args.lock_timeout)
    store.sql_for_tests("SELECT 1")  # Postgres: the pool and the schema check, before the go
    waits = {"chain_s": 0.0}
    op = {
        "round": lambda: _round_op(args, store, waits),
        "labels": lambda: _labels_op(args, store),
        "release": lambda: _release_op(store),
        "sensor": lambda: _sensor_op(store),
    }[args.child]()
    stop = Path(args.stop) if args.stop and args.until_stop else None
    result: dict = {"role": args.child, "pid": os.getpid(), "backend": store.backend, "ops": []}
    Path(args.ready).touch()
    if not wait_for(Path(args.go), 900):
        raise SystemExit("no go")
    result["t0"] = time.time()
    start, retries_before = time.perf_counter(), file_waits.retries
    i = 0
    while i < args.count or (stop is not None and not stop.exists()):
        if i and args.interval:
            _sleep_unless(stop, args.interval)
            if stop is not None and stop.exists() and i >= args.count:
                break
        t0, w0, c0 = time.perf_counter(), file_waits.wait_s, waits["chain_s"]
        entry: dict = {"i": i}
        try:
            entry |= op(i)
            entry["ok"] = True
        except Exception as exc:  # noqa: BLE001 (the benchmark reports every failure)
            file_waits.settle()
            entry.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:500]}")
        entry["s"] = time.perf_counter() - t0
        entry["file_lock_wait_s"] = file_waits.wait_s - w0
        entry["chain_s"] = waits["chain_s"] - c0
        result["ops"].append(entry)
        i += 1
    result["t1"] = time.time()
    result["wall_s"] = time.perf_counter() - start
    # Waits and refused opens after the go (not those of the set-up, while the others set up).
    result["file_lock_wait_s"] = sum(e["file_lock_wait_s"] for e in result["ops"])
    result["lock_retries"] = file_waits.retries - retries_before
    result["chain_s"] = waits["chain_s"]
    result["failures"] = sum(not e["ok"] for e in result["ops"])
    result["ok"] = result["failures"] == 0
    # The round-writer shape the DuckDB lock checks read.
    result["rounds"] = [e for e in result["ops"] if e["ok"] and "write_s" in e]
    Path(args.result).write_text(json.dumps(result, default=str))
    return 0
