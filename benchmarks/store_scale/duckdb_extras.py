"""The DuckDB-only measurements of docs/scaling.md sections 2.1 to 2.3 (`--duckdb-extras`):
response text in DuckDB against zstd Parquet, the cost of a primary key on a 2M-row table,
reward-model checkpoint sizes, and what a second process on one DuckDB file meets (two round
writers at once, a writer behind a long reader, a short lock timeout, plain DuckDB while the
file is held, the round-chain file lock).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.store_scale.procs import Children, child_env, wait_for
from benchmarks.store_scale.traffic import med


def text_storage(texts: dict[str, list[str]], folder: Path) -> list[dict]:
    """Bytes of response text: raw, in a DuckDB table (as the store keeps it), in zstd Parquet."""
    import duckdb

    out = []
    for name, values in texts.items():
        frame = pl.DataFrame({"response": values})
        db, pq = folder / f"{name}.duckdb", folder / f"{name}.parquet"
        con = duckdb.connect(str(db))
        con.register("frame", frame.to_arrow())
        con.execute("CREATE TABLE t AS SELECT * FROM frame")
        con.close()
        con = duckdb.connect(str(db))
        kinds = con.execute(
            "SELECT list(DISTINCT compression) FROM pragma_storage_info('t') "
            "WHERE column_name = 'response'"
        ).fetchone()[0]
        con.close()
        frame.write_parquet(pq, compression="zstd")
        out.append(
            {
                "text": name,
                "responses": frame.height,
                "raw_bytes": int(frame["response"].str.len_bytes().sum()),
                "duckdb_bytes": db.stat().st_size,
                "duckdb_compression": kinds,
                "parquet_zstd_bytes": pq.stat().st_size,
            }
        )
        db.unlink()
        pq.unlink()
    return out


def primary_key_cost(folder: Path, sizes: tuple[int, ...] = (20_000, 2_000_000)) -> list[dict]:
    """Why per-round writes slow down as tables grow: a round's replacement (delete + insert of
    2,048 rows, one fresh connection, as the store does it) into a table with and without a
    PRIMARY KEY, at two table sizes."""
    import duckdb

    rng = np.random.default_rng(0)

    def ids(n: int) -> list[str]:
        return [f"c-{x:016x}" for x in rng.integers(0, 2**63, size=n).tolist()]

    out = []
    for pk in (True, False):
        for n in sizes:
            db = folder / f"pk-{pk}-{n}.duckdb"
            con = duckdb.connect(str(db))
            key = "PRIMARY KEY" if pk else ""
            con.execute(f"CREATE TABLE t (id VARCHAR {key}, round_id VARCHAR, x INTEGER)")
            con.register("d", pl.DataFrame({"id": ids(n), "round_id": "old", "x": 1}).to_arrow())
            con.execute("INSERT INTO t SELECT * FROM d")
            con.close()
            times = []
            for k in range(5):
                rows = pl.DataFrame({"id": ids(2048), "round_id": f"new{k}", "x": 2})
                t0 = time.perf_counter()
                con = duckdb.connect(str(db))
                con.register("d", rows.to_arrow())
                con.execute("BEGIN TRANSACTION")
                con.execute("DELETE FROM t WHERE round_id = ?", [f"new{k}"])
                con.execute("INSERT INTO t SELECT * FROM d")
                con.execute("COMMIT")
                con.close()
                times.append(time.perf_counter() - t0)
            out.append({"primary_key": pk, "rows": n, "replace_2048_s": med(times)})
            db.unlink()
    return out


def checkpoint_sizes(dims: list[int], folder: Path) -> list[dict]:
    """Size and save/load time of one real reward-model checkpoint (heads, anchors, Adam)."""
    from resources.reward_model import UncertaintyModel

    um = UncertaintyModel()
    out = []
    rng = np.random.default_rng(0)
    for dim in dims:
        model = um.fresh(dim)
        x = rng.standard_normal((128, dim), dtype=np.float32)
        model.train_round(x[:64], x[64:], 64)
        path = folder / f"round-0001.{dim:012x}.safetensors"
        t0 = time.perf_counter()
        model.save(path)
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        type(model).load(path, um.ensemble_config())
        load_s = time.perf_counter() - t0
        out.append({"dim": dim, "bytes": path.stat().st_size, "save_s": save_s, "load_s": load_s})
        path.unlink()
    return out


def child_main(args: argparse.Namespace) -> int:
    """A subprocess: `holder` holds the file, `chain` the chain lock, `raw` opens the file with
    plain DuckDB (`workloads.child_main` is the writer)."""
    import duckdb

    from resources import chain_lock, home
    from resources.store import Store

    result: dict = {"role": args.child, "pid": os.getpid()}
    store = Store(lock_timeout_s=args.lock_timeout)
    Path(args.ready).touch()
    if not wait_for(Path(args.go), 900):
        raise SystemExit("no go")
    result["t0"] = time.time()
    t0 = time.perf_counter()
    try:
        if args.child == "holder":
            # One connection held for `hold` seconds, running a whole-history read first.
            with store._connect() as con:
                result["acquired_after_s"] = time.perf_counter() - t0
                n = con.execute(
                    "SELECT count(*), sum(length(ca.response) + length(cb.response)) FROM "
                    "judgements j JOIN pairs p USING (pair_id) "
                    "JOIN completions ca ON ca.completion_id = p.completion_a "
                    "JOIN completions cb ON cb.completion_id = p.completion_b"
                ).fetchone()[0]
                result["read_s"], result["read_rows"] = time.perf_counter() - t0, n
                Path(args.holding).touch()
                time.sleep(max(0.0, args.hold - (time.perf_counter() - t0)))
            result["held_s"] = time.perf_counter() - t0
            result["ended"] = time.time()
        elif args.child == "chain":
            with chain_lock.round_chain(home.auf_home(), args.what, wait_s=args.wait):
                result["acquired_after_s"] = time.perf_counter() - t0
                Path(args.holding).touch()
                time.sleep(args.hold)
            result["ended"] = time.time()
        elif args.child == "raw":
            con = duckdb.connect(str(store.database))  # plain DuckDB: no retry
            con.close()
            result["opened_after_s"] = time.perf_counter() - t0
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 (the benchmark reports what the second one gets)
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    result["wall_s"] = time.perf_counter() - t0
    Path(args.result).write_text(json.dumps(result, default=str))
    return 0


def lock_checks(args: argparse.Namespace, next_round: int, home: Path) -> tuple[dict, int]:
    """Real subprocesses on the DuckDB home; returns the results and the next free round."""
    work = Path(tempfile.mkdtemp(prefix="locks-", dir=home))
    kids = Children(args, work, child_env(home, ""))
    k, res = args.writer_rounds, {}

    def writer(name: str, first_round: int, count: int, *extra: str):
        rounds = ["--first-round", str(first_round), "--count", str(count), "--no-chain"]
        return kids.start(name, "round", *rounds, *extra)

    bound = 120.0 + 60.0 * k
    # 1. One writer alone: the baseline for the same work.
    res["alone"] = kids.run([writer("alone", next_round, k)], timeout=bound)["alone"]
    next_round += k
    # 2. Two writers at once, on different rounds: what the chain lock normally prevents, and the
    # store-level behaviour any second process on the file gets (sensors, label imports, ...).
    a, b = writer("a", next_round, k), writer("b", next_round + k, k)
    out = kids.run([a, b], timeout=2 * bound)
    res["concurrent_a"], res["concurrent_b"] = out["a"], out["b"]
    next_round += 2 * k
    # 3. A writer behind a long reader (one connection held `--hold` s): it waits, then writes.
    holder = kids.start("holder", "holder", "--hold", str(args.hold))
    out = kids.run([holder], [writer("w", next_round, 1)], timeout=600)
    res["holder"], res["behind_holder"] = out["holder"], out["w"]
    res["behind_holder"]["waited_s"] = out["holder"].get("ended", 0) - out["w"].get("t0", 0)
    next_round += 1
    # 4. The same with a lock timeout shorter than the hold: the store gives up with DuckDB's
    # lock error. 5. Plain DuckDB (no retry) while the file is held.
    short = ["--lock-timeout", str(args.short_timeout)]
    hold2 = ["--hold", str(max(args.hold, 3 * args.short_timeout))]
    out = kids.run(
        [kids.start("holder2", "holder", *hold2)],
        [writer("short", next_round, 1, *short), kids.start("raw", "raw")],
        timeout=600,
    )
    res["short_timeout"], res["raw_duckdb"] = out["short"], out["raw"]
    # 6. The round-chain lock: a second process stops at once naming the holder; one with
    # wait_s waits for it.
    out = kids.run(
        [kids.start("chain_a", "chain", "--what", "bench writer A", "--hold", "5")],
        [
            kids.start("chain_b", "chain", "--what", "bench writer B", "--hold", "0"),
            kids.start(
                "chain_c", "chain", "--what", "bench writer C", "--hold", "0", "--wait", "30"
            ),
        ],
        timeout=120,
    )
    res["chain_holder"] = out["chain_a"]
    res["chain_second"], res["chain_waiting"] = out["chain_b"], out["chain_c"]
    shutil.rmtree(work, ignore_errors=True)
    return res, next_round


def first_error(res: dict) -> str:
    """'ok', or the first error of a child's result (cut to 300 characters)."""
    if res.get("ok"):
        return "ok"
    errors = [e["error"] for e in res.get("ops", []) if not e.get("ok")] or [res.get("error", "")]
    return str(errors[0])[:300]


def render(r: dict, rounds: int, s: dict) -> list[str]:
    """The tables of these measurements (`r`: what `extras` returned)."""
    gib = 2**30
    lines = ["", "| one reward-model checkpoint | size | x rounds |", "|---|---:|---:|"]
    for c in r["checkpoints"]:
        lines.append(
            f"| d={c['dim']} | {c['bytes'] / 2**20:.1f} MiB | {c['bytes'] * rounds / gib:.1f} GiB |"
        )
    lines += [
        "",
        "| replace 2,048 rows, fresh connection | table rows | seconds |",
        "|---|---:|---:|",
    ]
    for c in r["primary_key_cost"]:
        kind = "with PRIMARY KEY" if c["primary_key"] else "no key"
        lines.append(f"| {kind} | {c['rows']:,} | {c['replace_2048_s']:.3f} |")
    lines += [
        "",
        "| response text | responses | raw | in DuckDB (compression) | zstd Parquet |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in r["text_storage"]:
        lines.append(
            f"| {t['text']} | {t['responses']:,} | {t['raw_bytes'] / 2**20:.1f} MiB | "
            f"{t['duckdb_bytes'] / 2**20:.1f} MiB ({', '.join(t['duckdb_compression'])}) | "
            f"{t['parquet_zstd_bytes'] / 2**20:.1f} MiB |"
        )
    w = r["locks"]

    def per_round(res: dict) -> str:
        done = res.get("rounds") or []
        if not done:
            return res.get("error", "failed")
        tot = [x["write_s"] + x["cache_s"] + x["read_s"] for x in done]
        return f"{med(tot):.2f} s/round (max {max(tot):.2f}), {res['lock_retries']} lock retries"

    short = w["short_timeout"]
    lines += [
        "",
        "| two processes on one DuckDB file | what happened |",
        "|---|---|",
        f"| one writer alone, {s['writer_rounds']} rounds | {per_round(w['alone'])}, "
        f"wall {w['alone']['wall_s']:.1f} s |",
        f"| two writers at once (A) | {per_round(w['concurrent_a'])}, "
        f"wall {w['concurrent_a']['wall_s']:.1f} s |",
        f"| two writers at once (B) | {per_round(w['concurrent_b'])}, "
        f"wall {w['concurrent_b']['wall_s']:.1f} s |",
        f"| a reader holding one connection {w['holder'].get('held_s', 0):.1f} s (its "
        f"whole-history join took {w['holder'].get('read_s', 0):.1f} s), then a writer | "
        f"the writer waited {w['behind_holder'].get('waited_s', float('nan')):.1f} s, then "
        f"its round: {per_round(w['behind_holder'])} |",
        f"| the same, writer's lock_timeout_s={s['short_timeout']} | {first_error(short)}"
        f" (after {w['short_timeout'].get('wall_s', 0):.1f} s) |",
        f"| plain duckdb.connect while held | "
        f"{'opened' if w['raw_duckdb'].get('ok') else w['raw_duckdb'].get('error', '')[:300]} |",
        f"| round-chain lock held, a second holder | "
        f"{'acquired' if w['chain_second'].get('ok') else w['chain_second'].get('error', '')} |",
        f"| round-chain lock held, a second with wait_s=30 | acquired after "
        f"{w['chain_waiting'].get('acquired_after_s', float('nan')):.1f} s |",
    ]
    return lines


def extras(args: argparse.Namespace, next_round: int, home: Path, synth) -> tuple[dict, int]:
    """All of the above on the built DuckDB home."""
    texts = {"synthetic": synth.texts(20_000, synth.median, synth.sigma, 64, 16_000)}
    if args.real_text and Path(args.real_text).is_file():
        texts["real"] = pl.read_parquet(args.real_text, columns=["response"])["response"].to_list()
    out = {}
    for name, fn in (
        ("text_storage", lambda d: text_storage(texts, d)),
        ("primary_key_cost", primary_key_cost),
        ("checkpoints", lambda d: checkpoint_sizes(args.checkpoint_dims, d)),
    ):
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=home))
        out[name] = fn(folder)
        shutil.rmtree(folder, ignore_errors=True)
    print("  two processes on one DuckDB file ...", flush=True)
    out["locks"], next_round = lock_checks(args, next_round, home)
    return out, next_round
