"""Four processes on one store at once: a round-step writer, `auf labels import`, a release build
and a sensor, first each alone, then all together (`workloads` says what each does).

Only one process may hold a chain's round-chain lock (on DuckDB the home's file lock, on
Postgres the advisory lock), so one of the four writes rounds; the other three are what runs
beside a round step in a deployment: label imports and release builds write, a sensor reads.
The round writer sets the length of the concurrent phase: the other three keep going until it
has written its rounds.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.store_scale.procs import Children, child_env

LABEL_DIR = "bench-labels"


class LockSampler(threading.Thread):
    """Every `interval` s, which of the benchmark's backends wait for a lock on the Postgres
    server (`pg_stat_activity.wait_event_type = 'Lock'`: rows, tables, advisory locks), added up
    per application name (each child sets its own through PGAPPNAME)."""

    def __init__(self, url: str, interval: float = 0.1):
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.wait_s: dict[str, float] = collections.defaultdict(float)
        self.events: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as con:
            last = time.perf_counter()
            while not self._done.is_set():
                rows = con.execute(
                    "SELECT application_name, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                    "AND application_name LIKE 'auf-bench-%'"
                ).fetchall()
                now = time.perf_counter()
                for app, event in rows:
                    self.wait_s[app.removeprefix("auf-bench-")] += now - last
                    self.events[app.removeprefix("auf-bench-")][event] += 1
                last = now
                self.samples += 1
                self._done.wait(self.interval)

    def finish(self) -> dict:
        self._done.set()
        self.join(timeout=10)
        return {
            "interval_s": self.interval,
            "samples": self.samples,
            "wait_s": dict(self.wait_s),
            "events": {k: dict(v) for k, v in self.events.items()},
        }


def prepare_labels(store, folder: Path, n_files: int, seed: int) -> int:
    """Label files for `auf labels import`, as people return them: one per round of the history
    and annotator (64 labels for a round of 64), the pairs recorded as sent out first (what
    exporting an annotation batch records). Not timed. Returns how many files."""
    from resources.store import utcnow

    judged = store.rounds_with_judgements()
    if not judged:
        raise SystemExit("no judged round to label")
    every = store.sql_for_tests("SELECT pair_id, round_id, completion_a, completion_b FROM pairs")
    by_round = {k[0]: v.sort("pair_id") for k, v in every.group_by("round_id")}
    rounds = [r for r in judged if r in by_round]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_files):
        pairs = by_round[rounds[k % len(rounds)]]
        choices = rng.choice(["A", "B", "A", "B", "tie"], size=pairs.height)
        annotator = f"annotator-{k // len(rounds)}"
        lines = [
            json.dumps({"pair_id": p, "choice": str(c), "annotator": annotator})
            for p, c in zip(pairs["pair_id"].to_list(), choices, strict=True)
        ]
        (folder / f"labels-{k:05d}.jsonl").write_text("\n".join(lines) + "\n")
    sent = pl.concat([by_round[r] for r in rounds]).select(
        "pair_id",
        "round_id",
        pl.col("completion_a").alias("shown_as_a"),
        pl.col("completion_b").alias("shown_as_b"),
        pl.lit(False).alias("swapped"),
        pl.lit(0, dtype=pl.Int64).alias("seed"),
        pl.lit(utcnow()).alias("created_at"),
    )
    store.add_presentations(sent)
    return n_files


def _stats(res: dict, sampled: dict | None, name: str) -> dict:
    """What the report shows of one child."""
    ops = res.get("ops") or []
    done = [e["s"] for e in ops if e.get("ok")]
    out = {
        "ops": len(ops),
        "ok_ops": len(done),
        "failures": res.get("failures", 0 if ops else 1),
        "errors": [e["error"] for e in ops if not e.get("ok")][:5]
        or ([res["error"]] if "error" in res else []),
        "median_op_s": float(np.median(done)) if done else float("nan"),
        "max_op_s": max(done) if done else float("nan"),
        "wall_s": res.get("wall_s", float("nan")),
        "file_lock_wait_s": res.get("file_lock_wait_s", 0.0),
        "lock_retries": res.get("lock_retries", 0),
        "chain_s": res.get("chain_s", 0.0),
        "t0": res.get("t0"),
        "t1": res.get("t1"),
    }
    if sampled is not None:
        out["server_lock_wait_s"] = sampled["wait_s"].get(name, 0.0)
        out["server_lock_events"] = sampled["events"].get(name, {})
    rounds = [e for e in ops if e.get("ok") and "write_s" in e]
    if rounds:
        out["round_store_s"] = [e["write_s"] + e["cache_s"] + e["read_s"] for e in rounds]
    if any("new_labels" in e for e in ops):
        out["files_imported"] = sum(e.get("status") == "imported" for e in ops)
        out["labels_added"] = sum(e.get("new_labels") or 0 for e in ops)
    store_s = [e["store_s"] for e in ops if e.get("ok") and "store_s" in e]
    if store_s:
        out["median_store_s"] = float(np.median(store_s))
    return out


def four_processes(
    args: argparse.Namespace, home: Path, url: str, next_round: int
) -> tuple[dict, int]:
    """Each workload alone, then all four at once, on the store of `home` (and `url`); returns
    what each measured and the next free round index."""
    work = Path(tempfile.mkdtemp(prefix="writers-", dir=home))
    kids = Children(args, work, child_env(home, url))
    labels = ["--label-dir", str(home / LABEL_DIR)]
    k, bound = args.writer_rounds, args.child_timeout

    def round_writer(name: str, first: int):
        return kids.start(name, "round", "--first-round", str(first), "--count", str(k))

    out: dict = {"alone": {}, "concurrent": {}}
    alone = {
        "round": lambda: round_writer("round_alone", next_round),
        "labels": lambda: kids.start(
            "labels_alone", "labels", "--count", str(args.label_ops), *labels
        ),
        "release": lambda: kids.start("release_alone", "release", "--count", "1"),
        "sensor": lambda: kids.start("sensor_alone", "sensor", "--count", str(args.sensor_ticks)),
    }
    for role, make in alone.items():
        child = make()
        res = kids.run([child], timeout=bound)[child.name]
        out["alone"][role] = _stats(res, None, child.name)
        print(f"    {role} alone: {_line(out['alone'][role])}", flush=True)
    next_round += k

    loop = ["--count", "1", "--until-stop"]
    together = [
        round_writer("round", next_round),
        kids.start("labels", "labels", *loop, "--label-offset", str(args.label_ops), *labels),
        kids.start("release", "release", *loop),
        kids.start("sensor", "sensor", *loop, "--interval", str(args.sensor_interval)),
    ]
    sampler = LockSampler(url) if url else None
    if sampler is not None:
        sampler.start()
    results = kids.run(together, timeout=bound, until=together[:1])
    sampled = sampler.finish() if sampler is not None else None
    for child in together:
        out["concurrent"][child.name] = _stats(results[child.name], sampled, child.name)
        print(
            f"    {child.name} with the others: {_line(out['concurrent'][child.name])}", flush=True
        )
    out["server_lock_sampling"] = (
        {k: v for k, v in sampled.items() if k in ("interval_s", "samples")} if sampled else None
    )
    next_round += k
    shutil.rmtree(work, ignore_errors=True)
    return out, next_round


def _line(s: dict) -> str:
    waits = s["file_lock_wait_s"] + s.get("server_lock_wait_s", 0.0)
    return (
        f"{s['ok_ops']}/{s['ops']} ok, median {s['median_op_s']:.2f} s, wall {s['wall_s']:.1f} s, "
        f"lock waits {waits:.1f} s, {s['failures']} failed"
    )
