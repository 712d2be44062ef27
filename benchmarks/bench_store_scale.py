"""The store at UltraFeedback's scale, DuckDB and Postgres side by side: size on disk, per-round
store time with a small and a full history, whole-history reads, and four processes at once.

Builds a synthetic round history through the real store (`resources.store.Store`), the same on
each backend (`--backend duckdb|postgres|both`; both by default): `--prompts` prompts answered
by `--members` pool members in rounds of `--round-size` prompts, with random-ish text of
realistic length (responses ~1.5 kB on average), the features the pipeline stores (fp16 `.npy`
blocks under `features/<encoder>/`, indexed by the `features` table, written by
`add_features`), reward scores, one pair per prompt, 4 rubric aspects per judged response and one
verdict per pair. The DuckDB store is a file in a home of its own; the Postgres store is a fresh
database on a throwaway server started with `pgserver` (or on `--postgres-url` /
`AUF_TEST_POSTGRES_URL`), dropped and stopped at the end, with its feature files in a home of its
own. Both stores are built round by round, alternating, so both see the same machine load.

Every round of the history is written and read with the store calls the assets make, in their
order (`round_prompts` -> `completions` -> `response_features` -> `reward_scores` ->
`selected_pairs` -> `judgements` -> `reward_model`), with the call-cache and ledger writes of
`completions` and `judgements`, and each call is timed (`store_scale/traffic.py`). With
`--api-rounds N` only the first and last N rounds do that; the rounds in between are bulk-loaded
in batches through the same tables (one transaction and one feature block per batch; Postgres is
then ANALYZEd, as autovacuum would have by then).

Then, per backend, on the full history: the size of everything on disk, the per-round calls
against the first rounds, re-running a round (idempotent replacement), whole-history reads, and
four real subprocesses (`store_scale/concurrency.py`): a round-step writer holding the round-chain
lock, `auf labels import`, a release build and a sensor, each alone and then all at once, with
each one's wall time, lock waits and failures. `--duckdb-extras` adds the DuckDB-only
measurements of docs/scaling.md 2.1-2.3 (text storage, primary-key cost, checkpoint sizes, two
writers on one file, a long reader, a short lock timeout, the chain file lock).

    .venv/bin/python benchmarks/bench_store_scale.py                     # smoke: both backends
    .venv/bin/python benchmarks/bench_store_scale.py --full --out bench-out/store_scale/full
    .venv/bin/python benchmarks/bench_store_scale.py --backend duckdb --full --feature-dim 384 \\
        --duckdb-extras --out bench-out/store_scale/d384                 # section 2 of the doc

Writes `store_scale.json` and `store_scale.md` (the tables) under `--out`. `--tokens` instead
counts the tokens of a real pool's generation requests, responses and rubric judge calls (the
inputs of the GPU-hour estimate in docs/scaling.md) into `tokens.json`; `--pk-cost` only times a
round's replacement in a DuckDB table with and without a primary key (`pk_cost.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.store_scale import concurrency, duckdb_extras, report, workloads  # noqa: E402
from benchmarks.store_scale.sizes import database_bytes, sizes  # noqa: E402
from benchmarks.store_scale.synth import Synth, encoder_key  # noqa: E402
from benchmarks.store_scale.traffic import bulk_load, round_traffic, summarise  # noqa: E402

BACKENDS = ("duckdb", "postgres")
FULL = {"prompts": 64_000, "members": 32, "measure_rounds": 3, "rerun": 2, "writer_rounds": 2}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-out/store_scale-smoke", help="output folder")
    ap.add_argument(
        "--backend", choices=(*BACKENDS, "both"), default="both", help="which store(s) to measure"
    )
    ap.add_argument(
        "--postgres-url",
        default=os.environ.get("AUF_TEST_POSTGRES_URL", ""),
        help="a Postgres server to create the run's database on (default: "
        "$AUF_TEST_POSTGRES_URL, else a throwaway pgserver)",
    )
    ap.add_argument("--home", default="", help="folder for the homes (default: a temp dir)")
    ap.add_argument(
        "--keep-home",
        action="store_true",
        help="leave the homes (and, with --postgres-url, the database) in place",
    )
    ap.add_argument(
        "--full",
        action="store_true",
        help="UltraFeedback's scale: 64,000 prompts x 32 members (2,048,000 responses, 1,000 "
        "rounds), 10 API rounds at each end unless --api-rounds says otherwise",
    )
    ap.add_argument("--prompts", type=int, default=1280, help="prompts in the history")
    ap.add_argument("--members", type=int, default=8, help="pool members (responses/prompt)")
    ap.add_argument("--round-size", type=int, default=64, help="prompts per round")
    ap.add_argument(
        "--feature-dim",
        type=int,
        default=42,
        help="feature size: 42 = the default text statistics, 384 = MiniLM, 426 = MiniLM + "
        "text statistics, anything else a synthetic encoder",
    )
    ap.add_argument("--response-bytes", type=float, default=1500.0, help="mean response size")
    ap.add_argument(
        "--api-rounds",
        type=int,
        default=0,
        help="rounds at the start and at the end written through the per-round calls; the "
        "rounds between are bulk-loaded (0: every round through the per-round calls)",
    )
    ap.add_argument("--bulk-batch", type=int, default=50, help="rounds per bulk-load batch")
    ap.add_argument("--measure-rounds", type=int, default=5, help="rounds timed on the full store")
    ap.add_argument("--rerun", type=int, default=5, help="re-runs of one round (replacement)")
    ap.add_argument("--writer-rounds", type=int, default=3, help="rounds of the round writer")
    ap.add_argument("--label-files", type=int, default=2000, help="label files made for imports")
    ap.add_argument("--label-ops", type=int, default=5, help="label imports timed alone")
    ap.add_argument("--sensor-ticks", type=int, default=3, help="sensor ticks timed alone")
    ap.add_argument(
        "--sensor-interval", type=float, default=5.0, help="seconds between sensor ticks"
    )
    ap.add_argument(
        "--child-timeout", type=float, default=3600.0, help="seconds before a child is killed"
    )
    ap.add_argument(
        "--duckdb-extras",
        action="store_true",
        help="also the DuckDB-only measurements (text storage, primary-key cost, checkpoint "
        "sizes, two writers on one file, a long reader, a short lock timeout, the chain lock)",
    )
    ap.add_argument("--hold", type=float, default=10.0, help="seconds the long reader holds")
    ap.add_argument("--short-timeout", type=float, default=3.0, help="the short lock timeout")
    ap.add_argument("--capacity", type=int, default=6400, help="replay buffer (pairs)")
    ap.add_argument("--checkpoint-dims", type=int, nargs="*", default=[42, 384, 426, 2560])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--real-text",
        default=str(REPO.parent / "shared" / "data" / "sim_pool_dev.parquet"),
        help="a pool file whose real responses are stored too, to compare (skipped if absent)",
    )
    ap.add_argument(
        "--tokens",
        action="store_true",
        help="only count the tokens of the --real-text pool's requests, responses and judge "
        "calls (with --tokenizer) and exit: the inputs of the GPU-hour estimate",
    )
    ap.add_argument(
        "--tokenizer",
        default=str(REPO / ".auf" / "models" / "smollm2-135m-instruct"),
        help="a tokenizer folder (default: the demo's SmolLM2, converted by `make demo`)",
    )
    ap.add_argument(
        "--pk-cost",
        action="store_true",
        help="only time a round's replacement in a 20k- and a 2M-row table with and without a "
        "primary key (why writes slow down as tables grow) and exit",
    )
    # Internal: the subprocesses of the concurrency measurements.
    roles = ("round", "labels", "release", "sensor", "holder", "chain", "raw")
    ap.add_argument("--child", choices=roles, help=argparse.SUPPRESS)
    for name in ("result", "ready", "go", "holding", "stop", "label-dir", "encoder"):
        ap.add_argument(f"--{name}", default="", help=argparse.SUPPRESS)
    ap.add_argument("--until-stop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-chain", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first-round", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--label-offset", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--interval", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--lock-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    ap.add_argument("--what", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--wait", type=float, default=0.0, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child in ("holder", "chain", "raw"):
        return duckdb_extras.child_main(args)
    if args.child:
        return workloads.child_main(args)
    out = Path(args.out)
    if args.pk_cost:
        folder = Path(tempfile.mkdtemp(prefix="pk-"))
        rows = duckdb_extras.primary_key_cost(folder)
        shutil.rmtree(folder, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "pk_cost.json").write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows, indent=1))
        return 0
    if args.tokens:
        from benchmarks.store_scale.tokens import token_stats

        stats = token_stats(Path(args.real_text), Path(args.tokenizer))
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokens.json").write_text(json.dumps(stats, indent=1))
        print(json.dumps(stats, indent=1))
        return 0
    if args.full:
        for key, value in FULL.items():
            setattr(args, key, value)
        args.api_rounds = args.api_rounds or 10
    if args.prompts % args.round_size:
        raise SystemExit(f"--prompts {args.prompts} is not a multiple of --round-size")
    backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    base = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="auf-store-scale-"))
    for b in backends:
        if (base / b).exists() and any((base / b).iterdir()):
            raise SystemExit(f"{base / b} is not empty: give an empty --home")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.pop("AUF_STORE_URL", None)  # the DuckDB store must not pick a server up
    os.environ["AUF_HOME"] = str(base / "parent")  # anything that reads the home: not a user's
    args.encoder = encoder_key(args.feature_dim)
    with contextlib.ExitStack() as stack:
        db = None
        if "postgres" in backends:
            from benchmarks.store_scale.pg import bench_database

            db = stack.enter_context(bench_database(args.postgres_url, keep=args.keep_home))
        result = run(args, backends, base, db)
    (out / "store_scale.json").write_text(json.dumps(result, indent=1, default=str))
    text = report.render(result)
    (out / "store_scale.md").write_text(text)
    print(text)
    if not args.keep_home and not args.home:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def history_checksum(store) -> list:
    """What must be equal when two stores hold the same history."""
    row = store.sql_for_tests(
        "SELECT count(*) AS n, sum(length(response)) AS text, count(DISTINCT prompt_id) AS p "
        "FROM completions"
    )
    return [int(v) for v in row.row(0)]


def run(args: argparse.Namespace, backends: list[str], base: Path, db) -> dict:
    from resources.store import Store

    started = time.perf_counter()
    load_start = os.getloadavg()  # the machine may be shared: timings are upper bounds
    homes = {b: base / b for b in backends}
    stores = {
        b: Store(path=str(homes[b] / "auf.duckdb"), url=db.url if b == "postgres" else "")
        for b in backends
    }
    size = args.round_size
    n_rounds = args.prompts // size
    extra = args.measure_rounds + 2 * args.writer_rounds + (3 * args.writer_rounds + 2)
    print(
        f"homes under {base}: {args.prompts:,} prompts x {args.members} members in {n_rounds} "
        f"rounds of {size}, d={args.feature_dim} ({args.encoder}); backends {', '.join(backends)}"
        + (f" (Postgres {db.version}, {db.server})" if db else ""),
        flush=True,
    )
    synths = {b: Synth(args.seed, args.members, size, args.response_bytes) for b in backends}
    res: dict[str, dict] = {b: {} for b in backends}
    ordered = None
    for b in backends:
        prompts = synths[b].prompts(args.prompts + extra * size)
        t0 = time.perf_counter()
        stores[b].add_prompts(prompts, origin="synthetic")
        res[b]["ingest_s"] = time.perf_counter() - t0
        ordered = ordered or sorted(prompts.iter_rows(), key=lambda r: r[0])  # take order: by id
        print(f"  {b}: ingested {prompts.height:,} prompts in {res[b]['ingest_s']:.1f} s")

    def each(index: int):
        """The backends in turn, the first one alternating from round to round."""
        return backends if index % 2 else backends[::-1]

    api = n_rounds if not args.api_rounds or 2 * args.api_rounds >= n_rounds else args.api_rounds
    history: dict[str, list[dict]] = {b: [] for b in backends}
    bulk: list[dict] = []
    response_bytes, index, shown = 0, 1, time.perf_counter()
    while index <= n_rounds:
        if index <= api or index > n_rounds - api:
            for b in each(index):
                r = round_traffic(
                    stores[b], synths[b], index, args.encoder, args.feature_dim, args.capacity
                )
                history[b].append(r)
            response_bytes += r["response_bytes"]
            index += 1
        else:
            last = min(index + args.bulk_batch - 1, n_rounds - api)
            batch = {"first": index, "last": last}
            for b in each(index):
                t0 = time.perf_counter()
                nbytes = bulk_load(
                    stores[b], synths[b], index, last, ordered, args.encoder, args.feature_dim
                )
                batch[f"{b}_s"] = time.perf_counter() - t0
            response_bytes += nbytes
            bulk.append(batch)
            index = last + 1
            if index > n_rounds - api and "postgres" in backends:
                t0 = time.perf_counter()
                stores["postgres"].sql_for_tests("ANALYZE")
                res["postgres"]["analyze_s"] = time.perf_counter() - t0
        if time.perf_counter() - shown > 30 or index > n_rounds:
            shown = time.perf_counter()
            print(
                f"  {index - 1}/{n_rounds} rounds, {shown - started:.0f} s; "
                + ", ".join(f"{b} {database_bytes(stores[b]) / 2**30:.2f} GiB" for b in backends),
                flush=True,
            )
    build_s = time.perf_counter() - started
    checksums = {b: history_checksum(stores[b]) for b in backends}
    for b in backends:
        res[b]["sizes_after_history"] = sizes(stores[b], db.pgdata if b == "postgres" else None)
        res[b]["completions"] = checksums[b][0]
        res[b]["history_checksum"] = checksums[b]
    print(f"history built in {build_s:.0f} s: {checksums}", flush=True)

    # Per-round traffic on the full store, then re-running the newest round.
    measured: dict[str, list[dict]] = {b: [] for b in backends}
    for _ in range(args.measure_rounds):
        for b in each(index):
            measured[b].append(
                round_traffic(
                    stores[b], synths[b], index, args.encoder, args.feature_dim, args.capacity
                )
            )
        index += 1
    before = {b: database_bytes(stores[b]) for b in backends}
    reruns: dict[str, list[dict]] = {b: [] for b in backends}
    for k in range(args.rerun):
        for b in each(k):
            reruns[b].append(
                round_traffic(
                    stores[b], synths[b], index - 1, args.encoder, args.feature_dim, args.capacity
                )
            )
    for b in backends:
        store = stores[b]
        res[b]["rerun_growth_bytes"] = database_bytes(store) - before[b]
        rids = store.rounds_with_judgements()
        t0 = time.perf_counter()
        release = store.release_pairs(rids)
        res[b]["release_read"] = {
            "rounds": len(rids),
            "rows": release.height,
            "seconds": time.perf_counter() - t0,
        }
        del release
        # All labelled pairs with their features: what training on every label (not the FIFO
        # buffer) would read.
        t0 = time.perf_counter()
        decided = store.decided_pairs()
        store.load_features(decided["chosen_completion_id"].to_list(), args.encoder)
        store.load_features(decided["rejected_completion_id"].to_list(), args.encoder)
        res[b]["all_labelled_read"] = {
            "pairs": decided.height,
            "seconds": time.perf_counter() - t0,
        }
        t0 = time.perf_counter()
        store.sql_for_tests("SELECT 1")
        res[b]["trivial_call_s"] = time.perf_counter() - t0
        print(f"  {b}: measured rounds and whole-history reads done", flush=True)

    first_writer_round = index
    for b in backends:
        store = stores[b]
        n_files = concurrency.prepare_labels(
            store, homes[b] / concurrency.LABEL_DIR, args.label_files, args.seed
        )
        print(f"  {b}: four processes ({n_files} label files ready) ...", flush=True)
        res[b]["load_average_before_processes"] = os.getloadavg()
        url = db.url if b == "postgres" else ""
        res[b]["four_processes"], index = concurrency.four_processes(
            args, homes[b], url, first_writer_round
        )
        if b == "duckdb" and args.duckdb_extras:
            res[b]["duckdb_extras"], index = duckdb_extras.extras(args, index, homes[b], synths[b])
        res[b]["sizes_final"] = sizes(store, db.pgdata if b == "postgres" else None)

    early_last = min(api, 11)
    for b in backends:
        rounds = history[b]
        res[b]["early"] = summarise([r for r in rounds if 2 <= r["round"] <= early_last])
        late = [r for r in rounds if r["round"] > n_rounds - api] if api < n_rounds else []
        res[b]["late_history"] = summarise(late) if late else None
        res[b]["full"] = summarise(measured[b])
        res[b]["rerun"] = summarise(reruns[b])
        res[b]["history_rounds"] = [
            {k: r[k] for k in ("round", "write_s", "cache_s", "read_s")} for r in rounds
        ]
    machine = {
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "duckdb": __import__("duckdb").__version__,
        "polars": pl.__version__,
    }
    if db:
        machine |= {
            "postgres": db.version,
            "postgres_server": db.server,
            "psycopg": __import__("psycopg").__version__,
        }
    settings = [
        "prompts",
        "members",
        "round_size",
        "feature_dim",
        "encoder",
        "response_bytes",
        "api_rounds",
        "bulk_batch",
        "capacity",
        "measure_rounds",
        "rerun",
        "writer_rounds",
        "label_ops",
        "sensor_ticks",
        "sensor_interval",
        "hold",
        "short_timeout",
        "seed",
        "backend",
    ]
    return {
        "settings": {k: getattr(args, k) for k in settings},
        "machine": machine,
        "rounds": n_rounds,
        "api_rounds_each_end": api,
        "bulk_batches": bulk,
        "mean_response_bytes": response_bytes / max(1, n_rounds * size * args.members),
        "same_history": "yes" if len({json.dumps(c) for c in checksums.values()}) == 1 else "NO",
        "build_s": build_s,
        "backends": res,
        "homes": str(base),
        "total_s": time.perf_counter() - started,
    }


if __name__ == "__main__":
    sys.exit(main())
