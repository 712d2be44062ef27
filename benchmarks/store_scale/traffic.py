"""One round's store traffic, as the round assets make it, each call timed; and the bulk load of
the rounds in the middle of a long history.

The same functions run on either backend: they take a `resources.store.Store` and call its
public methods (the bulk load alone uses the store's private transaction, as a test would).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import polars as pl

from benchmarks.store_scale.synth import Synth, round_id_of

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
ALL_OPS = (*WRITE_OPS, *CACHE_OPS, *READ_OPS)


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


def _no_guard(step: str):
    return contextlib.nullcontext()


def round_traffic(
    store,
    synth: Synth,
    index: int,
    encoder: str,
    dim: int,
    capacity: int,
    step: Callable[[str], contextlib.AbstractContextManager] = _no_guard,
) -> dict:
    """One round through the real store calls of the round's assets, each timed.

    Writes: round_prompts (take_round_prompts), completions, features (add_features),
    reward_scores, pairs, judgements (judge_scores + judgements in one transaction),
    reward_models. Reads: what each step reads first (its round's prompts, the responses to
    encode, the round's features, the scores, the judged responses, the replay buffer with its
    features, the orphan-file scan of `reward_model`).

    `step(name)` wraps each asset's calls, as `holds_round_chain` wraps each round asset: a
    writer in a subprocess passes the store's round-chain lock there (its wait is not in the
    call times).
    """
    from auf_assets.core.round_step import ReplayBuffer
    from resources import home

    t = Timer()
    rid = round_id_of(index)
    with step("round_prompts"):
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
    with step("completions"):
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
    with step("response_features"):
        with t("features_todo"):
            ids = store.completion_ids_of_round(rid)
            missing = store.missing_features(ids, encoder)
            todo = store.completion_texts(missing, [rid])
        order = {c: i for i, c in enumerate(comp["completion_id"].to_list())}
        vectors = rows["features"][[order[c] for c in todo["completion_id"].to_list()]]
        with t("features"):
            store.add_features(todo["completion_id"].to_list(), encoder, vectors)
    # reward_scores: the round's completions and their features.
    with step("reward_scores"):
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
    with step("selected_pairs"):
        with t("round_scores"):
            store.round_rows("reward_scores", rid)
        with t("pairs"):
            store.replace_round("pairs", rid, rows["pairs"])
    # judgements: the pairs, then the judged responses with their prompts; 4 aspects per judged
    # response, each call's top log-probs cached.
    with step("judgements"):
        with t("judged_items"):
            pairs = store.round_rows("pairs", rid)
            wanted = pl.concat([pairs["completion_a"], pairs["completion_b"]]).unique().to_list()
            store.round_completion_texts(rid).filter(pl.col("completion_id").is_in(wanted))
        scored = rows["judge_scores"].select("completion_id", "aspect").rows()
        calls = [f"{c}|{a}" for c, a in scored]
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
    with step("reward_model"):
        with t("replay_buffer"):
            buffer = ReplayBuffer.of(store.decided_pairs(index), capacity).rows
            store.feature_dim(rid, encoder)
            store.prompts_judged_through(index)
            chosen = buffer["chosen_completion_id"].to_list()
            rejected = buffer["rejected_completion_id"].to_list()
            store.missing_features(chosen + rejected, encoder)
            store.load_features(chosen, encoder)
            store.load_features(rejected, encoder)
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
    tables and columns as the per-round calls, without their per-round transactions (on
    Postgres the rows go in through COPY, as every store write does)."""
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
        rounds.append({"round_id": rid, "round_index": index, "created_at": utcnow()})
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
    rounds_frame = pl.DataFrame(rounds, schema_overrides={"round_index": pl.Int32})
    with store._transaction() as con:
        _insert(con, "rounds", rounds_frame, "ignore")
        _insert(con, "round_prompts", pl.concat(round_prompts))
        _insert(con, "usage", pl.concat(usage))
        for table, parts in frames.items():
            _insert(con, table, pl.concat(parts, how="vertical_relaxed"))
    store.add_features(ids, encoder, np.concatenate(feats))
    return nbytes


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(rounds: list[dict]) -> dict:
    """Medians per call and per kind of a set of rounds (and the largest total of each kind)."""
    return {
        "rounds": [r["round"] for r in rounds],
        "write_s": med([r["write_s"] for r in rounds]),
        "write_s_max": max(r["write_s"] for r in rounds),
        "cache_s": med([r["cache_s"] for r in rounds]),
        "cache_s_max": max(r["cache_s"] for r in rounds),
        "read_s": med([r["read_s"] for r in rounds]),
        "read_s_max": max(r["read_s"] for r in rounds),
        "total_s": med([r["write_s"] + r["cache_s"] + r["read_s"] for r in rounds]),
        "total_s_max": max(r["write_s"] + r["cache_s"] + r["read_s"] for r in rounds),
        "replay_pairs": med([r["replay_pairs"] for r in rounds]),
        "ops": {k: med([r["ops"][k] for r in rounds]) for k in ALL_OPS},
    }
