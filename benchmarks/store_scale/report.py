"""The Markdown tables of a run, the backends side by side."""

from __future__ import annotations

from benchmarks.store_scale import duckdb_extras
from benchmarks.store_scale.traffic import CACHE_OPS, READ_OPS, WRITE_OPS

GIB, MIB = 2**30, 2**20
NAMES = {"duckdb": "DuckDB", "postgres": "Postgres"}
ROLES = {
    "round": "round-step writer (holds the chain lock per step)",
    "labels": "`auf labels import` (one file of 64 labels, then the status)",
    "release": "release build (`build_release`, whole history)",
    "sensor": "sensor tick (chain report, unused prompts, label status)",
}


def _f(value, fmt: str = ".2f") -> str:
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return "-"


def render(r: dict) -> str:
    s, backends = r["settings"], list(r["backends"])
    b0, m = r["backends"][backends[0]], r["machine"]
    lines = [
        f"Store at {b0['completions']:,} completions ({s['prompts']:,} prompts x {s['members']} "
        f"members, {r['rounds']} rounds of {s['round_size']}), d={s['feature_dim']} "
        f"({s['encoder']}), mean response {r['mean_response_bytes']:.0f} B; "
        f"{r['api_rounds_each_end']} rounds at each end of the history through the per-round "
        f"calls, {len(r['bulk_batches'])} bulk batches between; backends built side by side "
        f"(round by round), the same history on each: {r['same_history']}.",
        f"Machine: {m['cpus']} CPUs, load average {m['load_average_start'][0]:.1f} "
        f"at the start, {m['load_average_end'][0]:.1f} at the end; duckdb "
        f"{r['machine']['duckdb']}, psycopg {r['machine'].get('psycopg', '-')}, PostgreSQL "
        f"{r['machine'].get('postgres', '-')} ({r['machine'].get('postgres_server', '-')}); "
        f"total {r['total_s'] / 60:.0f} min.",
        "",
        "| on disk, after the history | " + " | ".join(NAMES[b] for b in backends) + " |",
        "|---|" + "---:|" * len(backends),
    ]

    def row(label: str, fn) -> None:
        lines.append(f"| {label} | " + " | ".join(fn(r["backends"][b]) for b in backends) + " |")

    row(
        "database (DuckDB file; Postgres `pg_database_size`)",
        lambda x: f"{x['sizes_after_history']['database_bytes'] / GIB:.2f} GiB",
    )
    row(
        "feature files (.npy, the same on both)",
        lambda x: (
            f"{x['sizes_after_history']['feature_bytes'] / GIB:.2f} GiB "
            f"({x['sizes_after_history']['feature_files']})"
        ),
    )
    if any("server_folder_bytes" in r["backends"][b]["sizes_after_history"] for b in backends):
        row(
            "the throwaway server's whole data folder (WAL, catalogs)",
            lambda x: (
                _f(x["sizes_after_history"].get("server_folder_bytes", float("nan")) / GIB) + " GiB"
                if "server_folder_bytes" in x["sizes_after_history"]
                else "-"
            ),
        )
    row(
        "database after the measured rounds and re-runs",
        lambda x: f"{x['sizes_final']['database_bytes'] / GIB:.2f} GiB",
    )
    row(
        f"growth from re-running one round {s['rerun']} times",
        lambda x: f"{x['rerun_growth_bytes'] / MIB:.1f} MiB",
    )
    tables = [t["table"] for t in b0["sizes_after_history"]["tables"][:8]]
    for name in tables:

        def cell(x, name=name):
            t = next((t for t in x["sizes_after_history"]["tables"] if t["table"] == name), None)
            return f"{t['approx_bytes'] / MIB:,.0f} MiB" if t else "-"

        rows = next(t["rows"] for t in b0["sizes_after_history"]["tables"] if t["table"] == name)
        row(f"table `{name}` ({rows:,} rows)", cell)
    lines.append(
        "(table sizes: DuckDB distinct storage blocks x block size; Postgres "
        "`pg_total_relation_size`, heap + TOAST + indexes)"
    )

    phases = [("early", "history small"), ("full", "full history"), ("rerun", "re-run")]
    if b0.get("late_history"):
        phases.insert(1, ("late_history", "last history rounds"))
    cols = [(k, b) for k, _ in phases for b in backends]
    first = b0["early"]["rounds"]
    lines += [
        "",
        f"Per-round store calls, median seconds (history small: rounds {first[0]}-{first[-1]}; "
        f"full: {len(b0['full']['rounds'])} rounds on the full store; re-run: the newest round "
        f"again, {s['rerun']} times):",
        "",
        "| store call | "
        + " | ".join(f"{NAMES[b]}, {lbl}" for k, lbl in phases for b in backends)
        + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for op in (*WRITE_OPS, *CACHE_OPS, *READ_OPS):
        kind = "write" if op in WRITE_OPS else "cache" if op in CACHE_OPS else "read"
        vals = " | ".join(_f(r["backends"][b][k]["ops"][op], ".3f") for k, b in cols)
        lines.append(f"| {kind}: {op} | {vals} |")
    for key, label in (
        ("write_s", "all writes of round rows"),
        ("cache_s", "call cache + ledger"),
        ("read_s", "all reads"),
        ("total_s", "**the round's store time**"),
    ):
        vals = " | ".join(
            f"**{_f(r['backends'][b][k][key])}** (max {_f(r['backends'][b][k][key + '_max'])})"
            for k, b in cols
        )
        lines.append(f"| {label} | {vals} |")
    lines.append(
        "| replay pairs read | "
        + " | ".join(_f(r["backends"][b][k]["replay_pairs"], ".0f") for k, b in cols)
        + " |"
    )
    if {"duckdb", "postgres"} <= set(backends):
        d, p = r["backends"]["duckdb"], r["backends"]["postgres"]
        ratios = ", ".join(
            f"{lbl} {p[k]['total_s'] / d[k]['total_s']:.2f}" for k, lbl in phases if d[k]["total_s"]
        )
        lines += ["", f"Postgres / DuckDB, the round's store time: {ratios}."]

    lines += ["", "| whole-history reads | " + " | ".join(NAMES[b] for b in backends) + " |"]
    lines.append("|---|" + "---:|" * len(backends))
    row(
        "`release_pairs` of every judged round (what a release reads first)",
        lambda x: f"{x['release_read']['seconds']:.1f} s ({x['release_read']['rows']:,} pairs)",
    )
    row(
        "every labelled pair with its features",
        lambda x: (
            f"{x['all_labelled_read']['seconds']:.1f} s ({x['all_labelled_read']['pairs']:,})"
        ),
    )
    row(
        "a trivial call (`SELECT 1`: DuckDB opens the file, Postgres takes a pooled connection)",
        lambda x: f"{x['trivial_call_s'] * 1000:.1f} ms",
    )

    for b in backends:
        w = r["backends"][b].get("four_processes")
        if not w:
            continue
        lines += [
            "",
            f"{NAMES[b]}: four processes, each alone, then all at once "
            f"({s['writer_rounds']} rounds of the round writer; the others keep going until it "
            f"is done; sensor every {s['sensor_interval']:g} s; load average "
            f"{r['backends'][b]['load_average_before_processes'][0]:.1f} before):",
            "",
            "| process | alone: ops, median s | at once: ops ok / done | median s (max) | wall s "
            "| lock waits s | failed or timed out |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for role, label in ROLES.items():
            a, c = w["alone"].get(role, {}), w["concurrent"].get(role, {})
            waits = c.get("file_lock_wait_s", 0.0) + c.get("server_lock_wait_s", 0.0)
            lines.append(
                f"| {label} | {a.get('ok_ops', 0)}, {_f(a.get('median_op_s'))} | "
                f"{c.get('ok_ops', 0)} / {c.get('ops', 0)} | {_f(c.get('median_op_s'))} "
                f"({_f(c.get('max_op_s'))}) | {_f(c.get('wall_s'), '.1f')} | {_f(waits, '.1f')} | "
                f"{c.get('failures', '-')} |"
            )
        a, c = w["alone"].get("round", {}), w["concurrent"].get("round", {})
        alone_s = ", ".join(_f(x) for x in a.get("round_store_s", []))
        with_s = ", ".join(_f(x) for x in c.get("round_store_s", []))
        lines.append("")
        lines.append(
            f"Round writer: store time per round {alone_s} s alone, {with_s} s with the others; "
            f"taking the chain lock (7 steps a round): {_f(a.get('chain_s'))} s alone, "
            f"{_f(c.get('chain_s'))} s with the others. Lock waits: "
            + (
                "the store's retries on the file held by another process (DuckDB refuses a "
                "second opener); "
                f"{sum(x.get('lock_retries', 0) for x in w['concurrent'].values())} refused opens "
                "in all."
                if b == "duckdb"
                else "sampled on the server every "
                f"{w['server_lock_sampling']['interval_s']:g} s (`pg_stat_activity`, wait event "
                "type Lock), "
                f"{w['server_lock_sampling']['samples']} samples."
            )
        )
        lab = w["concurrent"].get("labels", {})
        if "files_imported" in lab:
            lines.append(
                f"Label imports at once: {lab['files_imported']} new files, "
                f"{lab['labels_added']:,} labels added (the rest: files already imported)."
            )
        errors = [e for v in w["concurrent"].values() for e in v.get("errors", [])]
        if errors:
            lines.append("Errors: " + "; ".join(f"`{e[:200]}`" for e in errors[:5]))
    if "duckdb_extras" in r["backends"].get("duckdb", {}):
        lines += duckdb_extras.render(r["backends"]["duckdb"]["duckdb_extras"], r["rounds"], s)
    return "\n".join(lines) + "\n"
