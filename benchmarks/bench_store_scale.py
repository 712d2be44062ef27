"""The DuckDB store at UltraFeedback's scale: size on disk, per-round write/read time, two writers.

Builds a synthetic round history through the real store (`resources.store.DuckDBStore` in a
fresh home set with `AUF_HOME`, as the tests do): `--prompts` prompts answered by `--members`
pool members in rounds of `--round-size` prompts, with random-ish text of realistic length
(responses ~1.5 kB on average), the features the pipeline stores (fp16 `.npy` blocks under
`features/<encoder>/`, indexed by the `features` table, written by `add_features`), reward
scores, one pair per prompt, 4 rubric aspects per judged response and one verdict per pair.

Every round of the history is written and read with the store calls the assets make, in their
order (`round_prompts` -> `completions` -> `response_features` -> `reward_scores` ->
`selected_pairs` -> `judgements` -> `reward_model`), with the call-cache and ledger writes of
`completions` and `judgements`, and each call is timed. With
`--api-rounds N` only the first and last N rounds do that; the rounds in between are bulk-loaded
in batches through the same tables (one transaction and one feature block per batch).

Then it measures, on the full history: the size of everything on disk, the per-round writes and
reads against the first rounds, re-running a round (idempotent replacement), a whole-history
read (what a dataset release reads), and what two processes on one home do: two writers at once
(the store's lock retry), a writer behind a long reader, a short lock timeout, plain DuckDB
without the retry, and the round-chain lock. Each writer is a real subprocess.

    .venv/bin/python benchmarks/bench_store_scale.py                    # smoke: about 5 minutes
    .venv/bin/python benchmarks/bench_store_scale.py --full --feature-dim 384 \\
        --out bench-out/store_scale/d384                                # 64,000 x 32, d=384

Writes `store_scale.json` and `store_scale.md` (the tables) under `--out`. `--tokens` instead
counts the tokens of a real pool's generation requests, responses and rubric judge calls (the
inputs of the GPU-hour estimate in docs/scaling.md) into `tokens.json`; `--pk-cost` only times a
round's replacement in a table with and without a primary key (`pk_cost.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Encoder settings of the pipeline by feature size (their real cache keys are looked up lazily:
# importing the encoder resource imports torch).
KNOWN_DIMS = {
    42: {"model": "", "text_stats": True},  # the default: text statistics
    384: {"model": "all-minilm-l6-v2", "text_stats": False},  # MiniLM alone
    426: {"model": "all-minilm-l6-v2", "text_stats": True},  # MiniLM + text statistics
}
SOURCES = ("evol_instruct", "false_qa", "flan_v2_niv2", "sharegpt", "ultrachat", "truthful_qa")
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
WRITE_OPS = (
    "round_prompts",
    "completions",
    "features",
    "reward_scores",
    "pairs",
    "judgements",
    "reward_models",
)
# The call cache (answers saved every `save_every` calls so a failed step resumes; cleared when
# the step succeeds) and the cost ledger (one row per pool member or judge and attempt).
CACHE_OPS = ("gen_cache", "judge_cache", "ledger")
READ_OPS = (
    "prompts_of_round",
    "features_todo",
    "round_features",
    "round_scores",
    "judged_items",
    "replay_buffer",
    "orphan_scan",
)


def encoder_key(dim: int) -> str:
    if dim in KNOWN_DIMS:
        from resources.encoder import FeatureEncoder

        return FeatureEncoder(**KNOWN_DIMS[dim]).key
    return f"synthetic-d{dim}|z1"


def round_id_of(index: int) -> str:
    return f"round-{index:04d}"


# -- synthetic data ---------------------------------------------------------------------------


class Synth:
    """Random-ish text (Zipf-weighted pseudo-words) and the rows of one round."""

    def __init__(
        self, seed: int, members: int, round_size: int, response_bytes: float, stream_mb: int = 48
    ):
        from resources.engine import GenerationEngine
        from resources.judge import RubricJudge

        self.rng = np.random.default_rng(seed)
        self.round_size = round_size
        self.gen_save_every = GenerationEngine().save_every
        self.judge_save_every = RubricJudge().save_every
        rng = self.rng
        letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
        weights = 1.0 / np.arange(1, 27)
        lengths = rng.integers(1, 11, size=20_000)
        vocab = ["".join(rng.choice(letters, size=n, p=weights / weights.sum())) for n in lengths]
        zipf = 1.0 / (np.arange(len(vocab)) + 2.7)
        n_words = stream_mb * 1024 * 1024 // 6
        idx = rng.choice(len(vocab), size=n_words, p=zipf / zipf.sum())
        seps = rng.choice([" ", " ", " ", " ", " ", " ", " ", ", ", ". ", ".\n"], size=n_words)
        vocab_arr = np.array(vocab, dtype=object)
        self.stream = "".join((vocab_arr[idx] + seps).tolist())
        self.members = [f"m{m:02d}" for m in range(members)]
        # Response lengths: log-normal, mean `response_bytes` (sigma 0.6), clipped.
        self.sigma = 0.6
        self.median = response_bytes / np.exp(self.sigma**2 / 2)
        self.sampling = {
            m: json.dumps({"max_new_tokens": 4096, "style": "", "temperature": 1.0, "top_p": 1.0})
            for m in self.members
        }

    def texts(self, n: int, median: float, sigma: float, lo: int, hi: int) -> list[str]:
        sizes = np.clip(self.rng.lognormal(np.log(median), sigma, size=n), lo, hi).astype(int)
        starts = self.rng.integers(0, len(self.stream) - hi - 1, size=n)
        pieces = zip(starts.tolist(), sizes.tolist(), strict=True)
        return [self.stream[s : s + k] for s, k in pieces]

    def hex_ids(self, prefix: str, n: int) -> list[str]:
        return [f"{prefix}{x:016x}" for x in self.rng.integers(0, 2**63, size=n).tolist()]

    def prompts(self, n: int) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "prompt_id": self.hex_ids("p-", n),
                "prompt": self.texts(n, 300.0, 1.0, 16, 8000),
                "source": self.rng.choice(SOURCES, size=n).tolist(),
            }
        )

    def round_rows(self, index: int, prompts: pl.DataFrame, dim: int) -> dict:
        """Every row one round writes, as the assets write them (and its feature block)."""
        from auf_assets.core.principles import choose_system_prompt
        from resources.store import utcnow

        rid = round_id_of(index)
        prev = round_id_of(index - 1) if index > 1 else None
        n_p, n_m = prompts.height, len(self.members)
        n = n_p * n_m
        pids = prompts["prompt_id"].to_list() * n_m
        srcs = prompts["source"].to_list() * n_m
        members = [m for m in self.members for _ in range(n_p)]
        chosen = [
            choose_system_prompt(s, f"{p}|{m}", 0)
            for p, s, m in zip(pids, srcs, members, strict=True)
        ]
        responses = self.texts(n, self.median, self.sigma, 64, 16_000)
        cids = self.hex_ids("c-", n)
        now = utcnow()
        completions = pl.DataFrame(
            {
                "completion_id": cids,
                "round_id": rid,
                "prompt_id": pids,
                "member": members,
                "model": [f"/models/{m}" for m in members],
                "principle": [c[0] for c in chosen],
                "system_prompt": [c[1] for c in chosen],
                "response": responses,
                "prompt_tokens": [(len(c[1]) + 300) // 4 for c in chosen],
                "completion_tokens": [len(r) // 4 for r in responses],
                "finish_reason": self.rng.choice(["stop"] * 19 + ["length"], size=n).tolist(),
                "sampling": [self.sampling[m] for m in members],
                "created_at": now,
            },
            schema_overrides={"prompt_tokens": pl.Int32, "completion_tokens": pl.Int32},
        )
        mu = self.rng.standard_normal(n)
        sigma = np.abs(self.rng.standard_normal(n)) * 0.1 + 0.05
        scores = pl.DataFrame(
            {
                "completion_id": cids,
                "prompt_id": pids,
                "round_id": rid,
                "reward_model_round": pl.Series([prev] * n, dtype=pl.String),
                "reward_model_path": pl.Series(
                    [f"reward_models/{prev}.0123456789ab.safetensors" if prev else None] * n,
                    dtype=pl.String,
                ),
                "mu": mu,
                "sigma": sigma,
            }
        )
        # One pair per prompt: two distinct members (completion k*n_p + i answers prompt i).
        a = self.rng.integers(0, n_m, size=n_p)
        b = (a + self.rng.integers(1, n_m, size=n_p)) % n_m
        ia, ib = a * n_p + np.arange(n_p), b * n_p + np.arange(n_p)
        pair_ids = self.hex_ids("pr-", n_p)
        pairs = pl.DataFrame(
            {
                "pair_id": pair_ids,
                "round_id": rid,
                "prompt_id": prompts["prompt_id"],
                "completion_a": [cids[i] for i in ia],
                "completion_b": [cids[i] for i in ib],
                "method": "deltaucb",
                "beta": 1.0,
                "seed": pl.Series([index] * n_p, dtype=pl.Int64),
                "mu_a": mu[ia],
                "mu_b": mu[ib],
                "sigma_a": sigma[ia],
                "sigma_b": sigma[ib],
                "created_at": now,
            }
        )
        judged = [cids[i] for i in np.concatenate([ia, ib])]
        n_j = len(judged) * len(ASPECTS)
        judge_scores = pl.DataFrame(
            {
                "round_id": rid,
                "completion_id": [c for c in judged for _ in ASPECTS],
                "aspect": list(ASPECTS) * len(judged),
                "judge": "rubric:/models/judge-70b",
                "score": self.rng.uniform(1, 5, size=n_j),
                "failed": False,
                "reason": pl.Series([None] * n_j, dtype=pl.String),
                "digit_mass": self.rng.uniform(0.9, 1.0, size=n_j),
                "attempts": pl.Series([1] * n_j, dtype=pl.Int32),
            }
        )
        pref = self.rng.choice(["a"] * 47 + ["b"] * 47 + ["tie"] * 4 + ["failed"] * 2, size=n_p)
        ca = pairs["completion_a"].to_list()
        cb = pairs["completion_b"].to_list()
        triples = list(zip(pref.tolist(), ca, cb, strict=True))
        chosen_ids = [x if p == "a" else y if p == "b" else None for p, x, y in triples]
        rejected_ids = [y if p == "a" else x if p == "b" else None for p, x, y in triples]
        judgements = pl.DataFrame(
            {
                "pair_id": pair_ids,
                "round_id": rid,
                "prompt_id": prompts["prompt_id"],
                "score_a": self.rng.uniform(1, 5, size=n_p),
                "score_b": self.rng.uniform(1, 5, size=n_p),
                "preference": pref.tolist(),
                "chosen_completion_id": pl.Series(chosen_ids, dtype=pl.String),
                "rejected_completion_id": pl.Series(rejected_ids, dtype=pl.String),
                "labeller": "rubric:/models/judge-70b",
                "labelled_at": now,
                "source": "llm_judge",
                "n_labels": pl.Series([0 if p == "failed" else 1 for p in pref], dtype=pl.Int32),
                "votes": pl.Series([None] * n_p, dtype=pl.String),
                "raw_choices": pref.tolist(),
            }
        )
        reward_models = pl.DataFrame(
            {
                "round_id": [rid],
                "path": [f"reward_models/{rid}.0123456789ab.safetensors"],
                "encoder": ["(set by the caller)"],
                "pairs_trained": [min(6400, index * n_p)],
                "prompts_done": [index * n_p],
                "loss_before": [0.69],
                "loss_after": [0.65],
                "created_at": [now],
                "base_round": pl.Series([prev], dtype=pl.String),
                "base_path": pl.Series(
                    [f"reward_models/{prev}.0123456789ab.safetensors" if prev else None],
                    dtype=pl.String,
                ),
                "replay_rounds": ["[]"],
                "replay_sha256": ["0" * 64],
                "replay_capacity": pl.Series([6400], dtype=pl.Int32),
            }
        )
        return {
            "round_id": rid,
            "index": index,
            "completions": completions,
            "features": self.rng.standard_normal((n, dim), dtype=np.float32),
            "reward_scores": scores,
            "pairs": pairs,
            "judge_scores": judge_scores,
            "judgements": judgements,
            "reward_models": reward_models,
            "response_bytes": int(sum(len(r) for r in responses)),
        }


# -- one round's store traffic, as the assets make it ------------------------------------------


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def usage_row(round_id: str, step: str, actor: str) -> pl.DataFrame:
    """One ledger row, as `StepLedger.actor` records it."""
    from resources.ledger import USAGE_COLUMNS
    from resources.store import utcnow

    row = {
        "run_id": "bench",
        "round_id": round_id,
        "step": step,
        "actor": actor,
        "model": f"/models/{actor}",
        "backend": "openai",
        "endpoint": "http://vllm:8000/v1",
        "device": None,
        "requests": 64,
        "cached": 0,
        "prompt_tokens": 6000,
        "completion_tokens": 20000,
        "wall_seconds": 60.0,
        "gpu_seconds": 60.0,
        "failures": 0,
        "retries": 0,
        "succeeded": True,
        "recorded_at": utcnow(),
    }
    return pl.DataFrame([row], schema=USAGE_COLUMNS)


def round_traffic(store, synth: Synth, index: int, encoder: str, dim: int, capacity: int) -> dict:
    """One round through the real store calls of the round's assets, each timed.

    Writes: round_prompts (take_round_prompts), completions, features (add_features),
    reward_scores, pairs, judgements (judge_scores + judgements in one transaction),
    reward_models. Reads: what each step reads first (its round's prompts, the responses to
    encode, the round's features, the scores, the judged responses, the replay buffer with its
    features, the orphan-file scan of `reward_model`).
    """
    from auf_assets.core.round_step import ReplayBuffer
    from resources import home

    t = Timer()
    rid = round_id_of(index)
    with t("round_prompts"):
        taken = store.take_round_prompts(rid, index, synth.round_size)
    with t("prompts_of_round"):
        prompts = store.prompts_of_round(rid)
    if prompts.height == 0:
        raise RuntimeError(f"no prompts left for {rid} ({taken.left} unused)")
    rows = synth.round_rows(index, prompts, dim)
    rows["reward_models"] = rows["reward_models"].with_columns(encoder=pl.lit(encoder))
    # completions: per member, the cache is read, then written every `save_every` responses,
    # and the member's ledger row recorded; the rows are written, then the cache cleared.
    comp = rows["completions"]
    for member, part in comp.group_by("member", maintain_order=True):
        keys = [f"{member[0]}|{c}" for c in part["completion_id"].to_list()]
        payloads = [
            json.dumps(
                {"text": r, "prompt_tokens": p, "completion_tokens": c, "finish_reason": "stop"}
            )
            for r, p, c in part.select("response", "prompt_tokens", "completion_tokens").rows()
        ]
        with t("gen_cache"):
            store.cached_calls(rid, "completions", keys)
            for start in range(0, len(keys), synth.gen_save_every):
                chunk = range(start, min(start + synth.gen_save_every, len(keys)))
                store.cache_calls(rid, "completions", {keys[i]: payloads[i] for i in chunk})
        with t("ledger"):
            store.record_usage(usage_row(rid, "completions", member[0]))
    with t("completions"):
        store.replace_round("completions", rid, comp)
    with t("gen_cache"):
        store.clear_cached_calls(rid, "completions")
    # response_features: which responses lack features, their texts, then the block.
    with t("features_todo"):
        ids = store.completion_ids_of_round(rid)
        missing = store.missing_features(ids, encoder)
        todo = store.completion_texts(missing, [rid])
    order = {c: i for i, c in enumerate(rows["completions"]["completion_id"].to_list())}
    vectors = rows["features"][[order[c] for c in todo["completion_id"].to_list()]]
    with t("features"):
        store.add_features(todo["completion_id"].to_list(), encoder, vectors)
    # reward_scores: the round's completions and their features.
    with t("round_features"):
        ids = store.completions_of_round(rid)["completion_id"].to_list()
        store.missing_features(ids, encoder)
        feats = store.load_features(ids, encoder)
        store.previous_round(index)
        if index > 1:
            store.reward_model_record(round_id_of(index - 1))
    assert feats.shape == (len(ids), dim)
    with t("reward_scores"):
        store.replace_round("reward_scores", rid, rows["reward_scores"])
    with t("round_scores"):
        store.round_rows("reward_scores", rid)
    with t("pairs"):
        store.replace_round("pairs", rid, rows["pairs"])
    # judgements: the pairs, then the judged responses with their prompts.
    with t("judged_items"):
        pairs = store.round_rows("pairs", rid)
        wanted = pl.concat([pairs["completion_a"], pairs["completion_b"]]).unique().to_list()
        store.round_completion_texts(rid).filter(pl.col("completion_id").is_in(wanted))
    # judgements: 4 aspects per judged response, each call's top log-probs cached.
    calls = [f"{c}|{a}" for c, a in rows["judge_scores"].select("completion_id", "aspect").rows()]
    answer = json.dumps([[str(d), -float(d)] for d in range(20)])
    with t("judge_cache"):
        store.cached_calls(rid, "judgements", calls)
        for start in range(0, len(calls), synth.judge_save_every):
            chunk = calls[start : start + synth.judge_save_every]
            store.cache_calls(rid, "judgements", dict.fromkeys(chunk, answer))
    with t("ledger"):
        store.record_usage(usage_row(rid, "judgements", "rubric:/models/judge-70b"))
    with t("judgements"):
        store.replace_round_tables(
            rid, {"judge_scores": rows["judge_scores"], "judgements": rows["judgements"]}
        )
    with t("judge_cache"):
        store.clear_cached_calls(rid, "judgements")
    # reward_model: the replay buffer (all decided pairs through this round, newest kept), its
    # features, the anchor count, the feature size; then the row; then the orphan-file scan.
    with t("replay_buffer"):
        buffer = ReplayBuffer.of(store.decided_pairs(index), capacity).rows
        store.feature_dim(rid, encoder)
        store.prompts_judged_through(index)
        both = buffer["chosen_completion_id"].to_list() + buffer["rejected_completion_id"].to_list()
        store.missing_features(both, encoder)
        store.load_features(buffer["chosen_completion_id"].to_list(), encoder)
        store.load_features(buffer["rejected_completion_id"].to_list(), encoder)
    with t("reward_models"):
        store.replace_round("reward_models", rid, rows["reward_models"])
    with t("orphan_scan"):
        store.remove_orphan_files(
            [home.reward_models_dir(store.root), home.features_dir(store.root)]
        )
    times = t.times
    return {
        "round": index,
        "ops": times,
        "write_s": sum(times[k] for k in WRITE_OPS),
        "cache_s": sum(times[k] for k in CACHE_OPS),
        "read_s": sum(times[k] for k in READ_OPS),
        "replay_pairs": buffer.height,
        "response_bytes": rows["response_bytes"],
    }


def bulk_load(store, synth: Synth, first: int, last: int, ordered: list, encoder: str, dim: int):
    """Rounds `first..last` in one transaction per table set and one feature block: the same
    tables and columns as the per-round calls, without their per-round transactions."""
    from resources.store import _insert, utcnow

    size = synth.round_size
    frames: dict[str, list[pl.DataFrame]] = {k: [] for k in ("completions", "reward_scores")}
    frames.update({k: [] for k in ("pairs", "judge_scores", "judgements", "reward_models")})
    round_prompts, rounds, feats, ids, usage, nbytes = [], [], [], [], [], 0
    for index in range(first, last + 1):
        rid = round_id_of(index)
        batch = ordered[(index - 1) * size : index * size]
        prompts = pl.DataFrame(batch, schema=["prompt_id", "prompt", "source"], orient="row")
        rows = synth.round_rows(index, prompts, dim)
        rows["reward_models"] = rows["reward_models"].with_columns(encoder=pl.lit(encoder))
        for k in frames:
            frames[k].append(rows[k])
        rounds.append((rid, index, utcnow()))
        round_prompts.append(
            pl.DataFrame(
                {
                    "round_id": rid,
                    "prompt_id": prompts["prompt_id"],
                    "position": pl.int_range(0, prompts.height, dtype=pl.Int32, eager=True),
                }
            )
        )
        feats.append(rows["features"])
        usage += [usage_row(rid, "completions", m) for m in synth.members]
        usage.append(usage_row(rid, "judgements", "rubric:/models/judge-70b"))
        ids.extend(rows["completions"]["completion_id"].to_list())
        nbytes += rows["response_bytes"]
    with store._transaction() as con:
        con.executemany("INSERT OR IGNORE INTO rounds VALUES (?, ?, ?)", rounds)
        _insert(con, "round_prompts", pl.concat(round_prompts))
        _insert(con, "usage", pl.concat(usage))
        for table, parts in frames.items():
            _insert(con, table, pl.concat(parts, how="vertical_relaxed"))
    store.add_features(ids, encoder, np.concatenate(feats))
    return nbytes


# -- sizes ------------------------------------------------------------------------------------


def dir_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def table_sizes(store) -> list[dict]:
    """Rows and (approximate) bytes per table: distinct storage blocks x block size."""
    out = []
    with store._connect() as con:
        block = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        for name in tables:
            rows = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            blocks = con.execute(
                "SELECT count(DISTINCT b) FROM (SELECT block_id AS b FROM "
                f"pragma_storage_info('{name}') WHERE block_id >= 0 UNION ALL "
                f"SELECT unnest(additional_block_ids) FROM pragma_storage_info('{name}'))"
            ).fetchone()[0]
            out.append({"table": name, "rows": rows, "approx_bytes": blocks * block})
    return sorted(out, key=lambda r: -r["approx_bytes"])


def sizes(store, home: Path) -> dict:
    db = store.database
    wal = db.with_name(db.name + ".wal")
    feat_bytes, feat_files = dir_bytes(home / "features")
    return {
        "duckdb_bytes": db.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "feature_bytes": feat_bytes,
        "feature_files": feat_files,
        "tables": table_sizes(store),
    }


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


def token_stats(pool_path: Path, tokenizer_dir: Path, sample: int = 1000) -> dict:
    """Tokens of real requests, for the GPU-hour estimate: a generation request (principle
    system prompt + prompt, chat template), a response, and one rubric judge call."""
    from transformers import AutoTokenizer

    from auf_assets.core.judging import ASPECTS as JUDGE_ASPECTS
    from auf_assets.core.judging import judge_messages
    from auf_assets.core.principles import choose_system_prompt

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    pool = pl.read_parquet(pool_path)
    prompts = pool.unique("prompt_id").sort("prompt_id")

    def chat_len(messages: list[dict]) -> int:
        enc = tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return len(enc["input_ids"])

    requests = [
        chat_len(
            [
                {"role": "system", "content": choose_system_prompt(s, f"{p}|member", 0)[1]},
                {"role": "user", "content": q},
            ]
        )
        for p, s, q in prompts.select("prompt_id", "source", "prompt").iter_rows()
    ]
    responses = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in pool["response"]]
    rows = pool.sample(min(sample, pool.height), seed=0)
    judge = [
        chat_len(judge_messages(a, q, r))
        for q, r in rows.select("prompt", "response").iter_rows()
        for a in JUDGE_ASPECTS
    ]

    def dist(x: list[int]) -> dict:
        v = np.asarray(x)
        return {
            "n": int(v.size),
            "mean": float(v.mean()),
            "p50": float(np.median(v)),
            "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)),
            "max": int(v.max()),
        }

    return {
        "pool": str(pool_path),
        "tokenizer": str(tokenizer_dir),
        "prompts": prompts.height,
        "responses": pool.height,
        "generation_request_tokens": dist(requests),
        "response_tokens": dist(responses),
        "judge_call_tokens": dist(judge),
        # The part of a judge call that is the same for every call of an aspect (system prompt,
        # aspect, rubric, instruction): what a server's prefix cache can reuse.
        "judge_fixed_tokens": {a: chat_len(judge_messages(a, "", "")) for a in JUDGE_ASPECTS},
        "response_bytes_mean": float(pool["response"].str.len_bytes().mean()),
    }


# -- two processes on one home -----------------------------------------------------------------


def child_main(args: argparse.Namespace) -> int:
    """A subprocess: `writer` writes rounds, `holder` holds the file, `chain` the chain lock,
    `raw` opens the file with plain DuckDB.

    Start-up (imports, test data) happens first; then it touches `--ready` and waits for the
    `--go` file, so what it measures starts when the parent says. A holder touches `--holding`
    once it holds what it holds.
    """
    import duckdb

    from resources import chain_lock, home
    from resources.store import DuckDBStore

    result: dict = {"role": args.child, "pid": os.getpid()}
    retries = {"n": 0}
    real_connect = duckdb.connect

    def counting_connect(*a, **k):
        try:
            return real_connect(*a, **k)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                retries["n"] += 1
            raise

    duckdb.connect = counting_connect  # count the store's retries on a held file
    store = DuckDBStore(lock_timeout_s=args.lock_timeout)
    synth = None
    if args.child == "writer":
        # Its own seed: ids must not repeat the parent's.
        seed = args.seed + 1000 + args.first_round
        synth = Synth(seed, args.members, args.round_size, args.response_bytes, stream_mb=8)
    if args.ready:
        Path(args.ready).touch()
    if args.go and not wait_for(Path(args.go), 900):
        raise SystemExit("no go")
    result["t0"] = time.time()
    t0 = time.perf_counter()
    try:
        if args.child == "writer":
            rounds = []
            for index in range(args.first_round, args.first_round + args.count):
                rounds.append(
                    round_traffic(
                        store, synth, index, args.encoder, args.feature_dim, args.capacity
                    )
                )
            result["rounds"] = rounds
        elif args.child == "holder":
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
                if args.holding:
                    Path(args.holding).touch()
                time.sleep(max(0.0, args.hold - (time.perf_counter() - t0)))
            result["held_s"] = time.perf_counter() - t0
            result["ended"] = time.time()
        elif args.child == "chain":
            with chain_lock.round_chain(home.auf_home(), args.what, wait_s=args.wait):
                result["acquired_after_s"] = time.perf_counter() - t0
                if args.holding:
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
    result["lock_retries"] = retries["n"]
    result["wall_s"] = time.perf_counter() - t0
    Path(args.result).write_text(json.dumps(result, default=str))
    return 0


def spawn(args: argparse.Namespace, work: Path, name: str, role: str, *extra: str):
    cmd = [
        sys.executable,
        __file__,
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
        *extra,
    ]
    log = open(work / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def finish(procs: dict, work: Path, timeout: float) -> dict:
    out = {}
    for name, proc in procs.items():
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        path = work / f"{name}.json"
        out[name] = json.loads(path.read_text()) if path.exists() else {"ok": False}
    return out


def two_writers(args: argparse.Namespace, next_round: int, home: Path) -> tuple[dict, int]:
    """Real subprocesses on the same home; returns the results and the next free round."""
    work = Path(tempfile.mkdtemp(prefix="writers-", dir=home))
    k, res = args.writer_rounds, {}
    n = iter(range(1000))

    def child(name: str, role: str, *extra: str, holding: bool = False):
        i = next(n)
        files = ["--ready", str(work / f"{i}.ready"), "--go", str(work / f"{i}.go")]
        if holding:
            files += ["--holding", str(work / f"{i}.holding")]
        proc = spawn(args, work, name, role, *extra, *files)
        return name, proc, work / f"{i}.ready", work / f"{i}.go", work / f"{i}.holding"

    def run(first: list, then: list, timeout: float) -> dict:
        """Start `first` (and wait until they hold, if holders), then `then`, all set up."""
        for _, _, ready, _, _ in first + then:
            wait_for(ready, 300)
        for _, _, _, go, _ in first:
            go.touch()
        for _, _, _, _, holding in first:
            if then:
                wait_for(holding, 600)
        for _, _, _, go, _ in then:
            go.touch()
        return finish({name: proc for name, proc, *_ in first + then}, work, timeout)

    def writer(name: str, first_round: int, count: int, *extra: str):
        rounds = ["--first-round", str(first_round), "--count", str(count)]
        return child(name, "writer", *rounds, *extra)

    bound = 120.0 + 60.0 * k
    # 1. One writer alone: the baseline for the same work.
    res["alone"] = run([writer("alone", next_round, k)], [], bound)["alone"]
    next_round += k
    # 2. Two writers at once, on different rounds: what the chain lock normally prevents, and the
    # store-level behaviour any second process on the file gets (sensors, label imports, ...).
    out = run([writer("a", next_round, k), writer("b", next_round + k, k)], [], 2 * bound)
    res["concurrent_a"], res["concurrent_b"] = out["a"], out["b"]
    next_round += 2 * k
    # 3. A writer behind a long reader (one connection held `--hold` s): it waits, then writes.
    hold = ["--hold", str(args.hold)]
    out = run([child("holder", "holder", *hold, holding=True)], [writer("w", next_round, 1)], 600)
    res["holder"], res["behind_holder"] = out["holder"], out["w"]
    res["behind_holder"]["waited_s"] = out["holder"].get("ended", 0) - out["w"].get("t0", 0)
    next_round += 1
    # 4. The same with a lock timeout shorter than the hold: the store gives up with DuckDB's
    # lock error. 5. Plain DuckDB (no retry) while the file is held.
    short = ["--lock-timeout", str(args.short_timeout)]
    hold2 = ["--hold", str(max(args.hold, 3 * args.short_timeout))]
    out = run(
        [child("holder2", "holder", *hold2, holding=True)],
        [writer("short", next_round, 1, *short), child("raw", "raw")],
        600,
    )
    res["short_timeout"], res["raw_duckdb"] = out["short"], out["raw"]
    # 6. The round-chain lock: a second process stops at once naming the holder; one with
    # wait_s waits for it.
    out = run(
        [child("chain_a", "chain", "--what", "bench writer A", "--hold", "5", holding=True)],
        [
            child("chain_b", "chain", "--what", "bench writer B", "--hold", "0"),
            child("chain_c", "chain", "--what", "bench writer C", "--hold", "0", "--wait", "30"),
        ],
        120,
    )
    res["chain_holder"] = out["chain_a"]
    res["chain_second"], res["chain_waiting"] = out["chain_b"], out["chain_c"]
    shutil.rmtree(work, ignore_errors=True)
    return res, next_round


# -- the run ----------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(rounds: list[dict]) -> dict:
    ops = {k: med([r["ops"][k] for r in rounds]) for k in (*WRITE_OPS, *CACHE_OPS, *READ_OPS)}
    return {
        "rounds": [r["round"] for r in rounds],
        "write_s": med([r["write_s"] for r in rounds]),
        "write_s_max": max(r["write_s"] for r in rounds),
        "cache_s": med([r["cache_s"] for r in rounds]),
        "cache_s_max": max(r["cache_s"] for r in rounds),
        "read_s": med([r["read_s"] for r in rounds]),
        "read_s_max": max(r["read_s"] for r in rounds),
        "replay_pairs": med([r["replay_pairs"] for r in rounds]),
        "ops": ops,
    }


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-out/store_scale-smoke", help="output folder")
    ap.add_argument("--home", default="", help="home folder to build in (default: a temp dir)")
    ap.add_argument("--keep-home", action="store_true", help="leave the built home in place")
    ap.add_argument("--full", action="store_true", help="UltraFeedback's scale: 64,000 x 32")
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
    ap.add_argument("--writer-rounds", type=int, default=3, help="rounds per writer process")
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
    # Internal: the subprocesses of the two-writer measurements.
    ap.add_argument("--child", choices=("writer", "holder", "chain", "raw"), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--ready", help=argparse.SUPPRESS)
    ap.add_argument("--first-round", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--go", help=argparse.SUPPRESS)
    ap.add_argument("--holding", help=argparse.SUPPRESS)
    ap.add_argument("--lock-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    ap.add_argument("--what", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--wait", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--encoder", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.pk_cost:
        folder = Path(tempfile.mkdtemp(prefix="pk-"))
        rows = primary_key_cost(folder)
        shutil.rmtree(folder, ignore_errors=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "pk_cost.json").write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows, indent=1))
        return 0
    if args.tokens:
        stats = token_stats(Path(args.real_text), Path(args.tokenizer))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "tokens.json").write_text(json.dumps(stats, indent=1))
        print(json.dumps(stats, indent=1))
        return 0
    if args.full:  # about 30 minutes on 2 cores
        args.prompts, args.members = 64_000, 32
        args.api_rounds = args.api_rounds or 10
        args.measure_rounds, args.rerun, args.writer_rounds = 3, 2, 2

    from resources.store import DuckDBStore

    load_start = os.getloadavg()  # the machine may be shared: timings are upper bounds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="auf-store-scale-"))
    if (home / "auf.duckdb").exists():
        raise SystemExit(f"{home} already holds a store: give an empty --home")
    os.environ["AUF_HOME"] = str(home)  # the tests' mechanism: the store's default path
    args.encoder = encoder_key(args.feature_dim)
    store = DuckDBStore()
    size = args.round_size
    n_rounds = args.prompts // size
    extra = args.measure_rounds + 3 * args.writer_rounds + 2  # rounds beyond the history
    started = time.perf_counter()
    print(
        f"home {home}: {args.prompts:,} prompts x {args.members} members in {n_rounds} rounds "
        f"of {size}, d={args.feature_dim} ({args.encoder})",
        flush=True,
    )
    synth = Synth(args.seed, args.members, size, args.response_bytes)
    prompts = synth.prompts(args.prompts + extra * size)
    t0 = time.perf_counter()
    store.add_prompts(prompts, origin="synthetic")
    ingest_s = time.perf_counter() - t0
    ordered = sorted(prompts.iter_rows(), key=lambda r: r[0])  # take order: by id
    print(f"ingested {prompts.height:,} prompts in {ingest_s:.1f} s", flush=True)

    api = n_rounds if not args.api_rounds or 2 * args.api_rounds >= n_rounds else args.api_rounds
    history: list[dict] = []
    bulk: list[dict] = []
    open_small = None
    response_bytes = 0
    index = 1
    shown = time.perf_counter()
    while index <= n_rounds:
        if index <= api or index > n_rounds - api:
            r = round_traffic(store, synth, index, args.encoder, args.feature_dim, args.capacity)
            history.append(r)
            response_bytes += r["response_bytes"]
            if index == min(api, 10) and open_small is None:
                t0 = time.perf_counter()
                store.sql_for_tests("SELECT 1")
                open_small = time.perf_counter() - t0
            index += 1
        else:
            last = min(index + args.bulk_batch - 1, n_rounds - api)
            t0 = time.perf_counter()
            response_bytes += bulk_load(
                store, synth, index, last, ordered, args.encoder, args.feature_dim
            )
            bulk.append({"first": index, "last": last, "seconds": time.perf_counter() - t0})
            index = last + 1
        if time.perf_counter() - shown > 30 or index > n_rounds:
            shown, done = time.perf_counter(), index - 1
            print(
                f"  {done}/{n_rounds} rounds, {time.perf_counter() - started:.0f} s, "
                f"store {store.database.stat().st_size / 2**30:.2f} GiB",
                flush=True,
            )
    build_s = time.perf_counter() - started

    t0 = time.perf_counter()
    store.sql_for_tests("SELECT 1")
    open_full = time.perf_counter() - t0
    size_info = sizes(store, home)
    n_completions = store.count_rows("completions")
    print(f"history built in {build_s:.0f} s: {n_completions:,} completions", flush=True)

    # Per-round traffic on the full store.
    measured = []
    for _ in range(args.measure_rounds):
        measured.append(
            round_traffic(store, synth, index, args.encoder, args.feature_dim, args.capacity)
        )
        index += 1
    # Re-running the newest round: its rows replaced (new responses, same prompts).
    before = store.database.stat().st_size
    reruns = []
    for _ in range(args.rerun):
        reruns.append(
            round_traffic(store, synth, index - 1, args.encoder, args.feature_dim, args.capacity)
        )
    rerun_growth = store.database.stat().st_size - before
    # A whole-history read: what a dataset release (`preference_dataset`) reads.
    rids = store.rounds_with_judgements()
    t0 = time.perf_counter()
    release = store.release_pairs(rids)
    release_s = time.perf_counter() - t0
    release_rows = release.height
    del release

    # All labelled pairs with their features: what training on every label (not the FIFO
    # buffer) would read.
    t0 = time.perf_counter()
    decided = store.decided_pairs()
    store.load_features(decided["chosen_completion_id"].to_list(), args.encoder)
    store.load_features(decided["rejected_completion_id"].to_list(), args.encoder)
    all_labelled = {"pairs": decided.height, "seconds": time.perf_counter() - t0}
    del decided
    texts = {"synthetic": synth.texts(20_000, synth.median, synth.sigma, 64, 16_000)}
    if args.real_text and Path(args.real_text).is_file():
        texts["real"] = pl.read_parquet(args.real_text, columns=["response"])["response"].to_list()
    text_dir = Path(tempfile.mkdtemp(prefix="text-", dir=home))
    text_sizes = text_storage(texts, text_dir)
    shutil.rmtree(text_dir, ignore_errors=True)

    print("two processes on one home ...", flush=True)
    writers, index = two_writers(args, index, home)
    pk_dir = Path(tempfile.mkdtemp(prefix="pk-", dir=home))
    pk_cost = primary_key_cost(pk_dir)
    shutil.rmtree(pk_dir, ignore_errors=True)
    ckpt_dir = Path(tempfile.mkdtemp(prefix="ckpt-", dir=home))
    ckpts = checkpoint_sizes(args.checkpoint_dims, ckpt_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    final_sizes = sizes(store, home)

    early = [r for r in history if 2 <= r["round"] <= min(api, 11)]
    late = [r for r in history if r["round"] > n_rounds - api] if api < n_rounds else []
    result = {
        "settings": {
            k: getattr(args, k)
            for k in (
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
                "hold",
                "short_timeout",
                "seed",
            )
        },
        "machine": {
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "duckdb": __import__("duckdb").__version__,
            "polars": pl.__version__,
        },
        "rounds": n_rounds,
        "api_rounds_each_end": api,
        "bulk_batches": bulk,
        "completions": n_completions,
        "mean_response_bytes": response_bytes / max(1, n_rounds * size * args.members),
        "ingest_s": ingest_s,
        "build_s": build_s,
        "open_s_small": open_small,
        "open_s_full": open_full,
        "sizes_after_history": size_info,
        "sizes_final": final_sizes,
        "early": summarise(early) if early else None,
        "late_history": summarise(late) if late else None,
        "full": summarise(measured),
        "rerun": summarise(reruns) | {"file_growth_bytes": rerun_growth},
        "release_read": {"rounds": len(rids), "rows": release_rows, "seconds": release_s},
        "all_labelled_read": all_labelled,
        "text_storage": text_sizes,
        "writers": writers,
        "checkpoints": ckpts,
        "primary_key_cost": pk_cost,
        "history_rounds": [
            {k: r[k] for k in ("round", "write_s", "cache_s", "read_s")} for r in history
        ],
        "home": str(home),
        "total_s": time.perf_counter() - started,
    }
    (out / "store_scale.json").write_text(json.dumps(result, indent=1, default=str))
    report = render(result)
    (out / "store_scale.md").write_text(report)
    print(report)
    if not args.keep_home and not args.home:
        shutil.rmtree(home, ignore_errors=True)
    return 0


def render(r: dict) -> str:
    gib = 2**30
    s, sz = r["settings"], r["sizes_after_history"]
    lines = [
        f"Store at {r['completions']:,} completions ({s['prompts']:,} prompts x {s['members']} "
        f"members, {r['rounds']} rounds of {s['round_size']}), d={s['feature_dim']} "
        f"({s['encoder']}), mean response {r['mean_response_bytes']:.0f} B; history built in "
        f"{r['build_s']:.0f} s ({r['api_rounds_each_end']} rounds at each end through the "
        f"per-round calls, {len(r['bulk_batches'])} bulk batches between); load average "
        f"{r['machine']['load_average_start'][0]:.1f} at the start, "
        f"{r['machine']['load_average_end'][0]:.1f} at the end on {r['machine']['cpus']} CPUs",
        "",
        "| on disk | size |",
        "|---|---:|",
        f"| auf.duckdb | {sz['duckdb_bytes'] / gib:.2f} GiB |",
        f"| feature files ({sz['feature_files']} .npy) | {sz['feature_bytes'] / gib:.2f} GiB |",
    ]
    for c in r["checkpoints"]:
        lines.append(
            f"| one reward-model checkpoint, d={c['dim']} (x {r['rounds']} rounds) | "
            f"{c['bytes'] / 2**20:.1f} MiB ({c['bytes'] * r['rounds'] / gib:.1f} GiB) |"
        )
    lines += ["", "| table | rows | approx. size |", "|---|---:|---:|"]
    for t in sz["tables"][:8]:
        lines.append(f"| {t['table']} | {t['rows']:,} | {t['approx_bytes'] / 2**20:,.0f} MiB |")
    early = r["early"]["rounds"]
    cols = [("early", f"rounds {early[0]}-{early[-1]} (history small)")]
    if r["late_history"]:
        cols.append(("late_history", f"last {r['api_rounds_each_end']} history rounds"))
    cols += [("full", "on the full store"), ("rerun", "re-running the newest round")]
    lines += [
        "",
        "| per-round store call (median s) | " + " | ".join(c[1] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for op in (*WRITE_OPS, *CACHE_OPS, *READ_OPS):
        kind = "write" if op in WRITE_OPS else "cache" if op in CACHE_OPS else "read"
        vals = " | ".join(f"{r[k]['ops'][op]:.3f}" for k, _ in cols)
        lines.append(f"| {kind}: {op} | {vals} |")
    for key, label in (
        ("write_s", "all writes of round rows"),
        ("cache_s", "call cache + ledger"),
        ("read_s", "all reads"),
    ):
        vals = " | ".join(f"**{r[k][key]:.2f}** (max {r[k][key + '_max']:.2f})" for k, _ in cols)
        lines.append(f"| {label} | {vals} |")
    lines.append(
        "| replay pairs read | " + " | ".join(f"{r[k]['replay_pairs']:.0f}" for k, _ in cols) + " |"
    )
    lines += [
        "",
        f"Opening the file for one call: {r['open_s_small'] or float('nan'):.3f} s small, "
        f"{r['open_s_full']:.3f} s full. Re-running a round {s['rerun']} times grew the file by "
        f"{r['rerun']['file_growth_bytes'] / 2**20:.1f} MiB. Whole-history read "
        f"(`release_pairs`, {r['release_read']['rows']:,} pairs of {r['release_read']['rounds']} "
        f"rounds): {r['release_read']['seconds']:.1f} s.",
    ]
    lines.append(
        f"All {r['all_labelled_read']['pairs']:,} labelled pairs with their features (training "
        f"on every label instead of the FIFO buffer): {r['all_labelled_read']['seconds']:.1f} s."
    )
    lines += ["", "| replace 2,048 rows, fresh connection | table rows | seconds |"]
    lines.append("|---|---:|---:|")
    for c in r.get("primary_key_cost", []):
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
    w = r["writers"]

    def per_round(res: dict) -> str:
        rounds = res.get("rounds") or []
        if not rounds:
            return res.get("error", "failed")
        tot = [x["write_s"] + x["cache_s"] + x["read_s"] for x in rounds]
        return f"{med(tot):.2f} s/round (max {max(tot):.2f}), {res['lock_retries']} lock retries"

    lines += [
        "",
        "| two processes on one home | what happened |",
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
        f"| the same, writer's lock_timeout_s={s['short_timeout']} | "
        f"{'ok' if w['short_timeout'].get('ok') else w['short_timeout'].get('error', '')[:300]}"
        f" (after {w['short_timeout'].get('wall_s', 0):.1f} s) |",
        f"| plain duckdb.connect while held | "
        f"{'opened' if w['raw_duckdb'].get('ok') else w['raw_duckdb'].get('error', '')[:300]} |",
        f"| round-chain lock held, a second holder | "
        f"{'acquired' if w['chain_second'].get('ok') else w['chain_second'].get('error', '')} |",
        f"| round-chain lock held, a second with wait_s=30 | acquired after "
        f"{w['chain_waiting'].get('acquired_after_s', float('nan')):.1f} s |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
