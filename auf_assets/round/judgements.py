"""`judgements`: one verdict per selected pair from the configured label source."""

import json
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from auf_assets.core.judging import ASPECTS, decide_preference
from auf_assets.core.labels import Vote, resolve_votes
from auf_assets.core.response_pool import PoolFileError, oracle_scores
from auf_assets.partitions import rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.reporting import markdown_preview, progress_logger
from auf_assets.round.selection import selected_pairs
from auf_assets.round.shared import GROUP
from auf_assets.round_guard import holds_round_chain
from resources.judge import RubricJudge
from resources.labelling import LabellingSettings
from resources.ledger import StepLedger, ledger_prices
from resources.reward_judge import RewardModelJudge
from resources.store import CallCache, DuckDBStore, utcnow


class JudgementsConfig(dg.Config):
    tie_margin: float = Field(
        default=0.0,
        ge=0.0,
        description="scores this close count as a tie (rubric, reward-model and oracle judges)",
    )


_VERDICT_SCHEMA = {
    "pair_id": pl.String,
    "round_id": pl.String,
    "prompt_id": pl.String,
    "score_a": pl.Float64,
    "score_b": pl.Float64,
    "preference": pl.String,
    "chosen_completion_id": pl.String,
    "rejected_completion_id": pl.String,
    "labeller": pl.String,
    "labelled_at": pl.Datetime("us"),
    "source": pl.String,
    "n_labels": pl.Int32,
    "votes": pl.String,
    "raw_choices": pl.String,
}
_SCORE_SCHEMA = {
    "round_id": pl.String,
    "completion_id": pl.String,
    "aspect": pl.String,
    "judge": pl.String,
    "score": pl.Float64,
    "failed": pl.Boolean,
    "reason": pl.String,
    "digit_mass": pl.Float64,
    "attempts": pl.Int32,
}


def _chosen(pair: dict, pref: str) -> tuple[str | None, str | None]:
    if pref == "a":
        return pair["completion_a"], pair["completion_b"]
    if pref == "b":
        return pair["completion_b"], pair["completion_a"]
    return None, None


def _verdicts_from_scores(
    pairs: pl.DataFrame,
    scores: dict[str, float],
    *,
    tie_margin: float,
    labeller: str,
    source: str,
) -> pl.DataFrame:
    """One verdict per pair from a score per response (NaN or absent: the pair failed)."""
    verdicts = []
    for pair in pairs.iter_rows(named=True):
        a = scores.get(pair["completion_a"], float("nan"))
        b = scores.get(pair["completion_b"], float("nan"))
        failed = np.isnan(a) or np.isnan(b)
        pref = "failed" if failed else decide_preference(a, b, tie_margin=tie_margin)
        chosen, rejected = _chosen(pair, pref)
        verdicts.append(
            {
                "pair_id": pair["pair_id"],
                "round_id": pair["round_id"],
                "prompt_id": pair["prompt_id"],
                "score_a": None if np.isnan(a) else float(a),
                "score_b": None if np.isnan(b) else float(b),
                "preference": pref,
                "chosen_completion_id": chosen,
                "rejected_completion_id": rejected,
                "labeller": labeller,
                "labelled_at": utcnow(),
                "source": source,
                "n_labels": 0 if failed else 1,
                "votes": None,
                "raw_choices": pref,
            }
        )
    return pl.DataFrame(verdicts, schema=_VERDICT_SCHEMA)


def _judged_items(store: DuckDBStore, round_id: str, pairs: pl.DataFrame) -> pl.DataFrame:
    wanted = pl.concat([pairs["completion_a"], pairs["completion_b"]]).unique().to_list()
    return store.round_completion_texts(round_id).filter(pl.col("completion_id").is_in(wanted))


def _rubric_verdicts(context, config, judge: RubricJudge, store, round_id, pairs):
    items = _judged_items(store, round_id, pairs)
    context.log.info(f"judging {items.height} responses x {len(ASPECTS)} aspects with {judge.name}")
    ledger = StepLedger(store, context.run.run_id, round_id, "judgements")
    cache = CallCache(store, round_id, "judgements")
    started = time.perf_counter()
    with ledger.actor(judge.name, judge.model, **judge.placement()) as usage:
        overall_scores, rated = judge.overall(
            items["prompt"].to_list(),
            items["response"].to_list(),
            progress=progress_logger(context, "judge calls"),
            cache=cache,
            usage=usage,
        )
    judge_s = time.perf_counter() - started
    aspect_rows = pl.DataFrame(
        {
            "round_id": round_id,
            "completion_id": [items["completion_id"][r.item] for r in rated],
            "aspect": [r.aspect for r in rated],
            "judge": judge.name,
            "score": [r.result.score for r in rated],
            "failed": [r.result.failed for r in rated],
            "reason": [r.result.reason for r in rated],
            "digit_mass": [r.result.digit_mass for r in rated],
            "attempts": [r.attempts for r in rated],
        },
        schema_overrides={
            "score": pl.Float64,
            "reason": pl.String,
            "digit_mass": pl.Float64,
            "attempts": pl.Int32,
        },
    )
    overall = dict(zip(items["completion_id"], overall_scores, strict=True))
    verdicts = _verdicts_from_scores(
        pairs, overall, tie_margin=config.tie_margin, labeller=judge.name, source="llm_judge"
    )
    failures = aspect_rows.group_by("aspect").agg(pl.col("failed").mean()).sort("aspect")
    metadata = {
        "judge": judge.name,
        "judge_calls": aspect_rows.height,
        "aspect_failure_rate": dg.MetadataValue.json(
            {a: round(f, 3) for a, f in failures.iter_rows()}
        ),
        "retried_aspects": int((aspect_rows["attempts"] > 1).sum()),
        # Text-fallback scores carry no digit mass (NaN): averaged over the others, never NaN.
        "mean_digit_mass": float(aspect_rows["digit_mass"].fill_nan(None).mean() or 0.0),
        "judge_seconds": round(judge_s, 2),
        **ledger.metadata(ledger_prices(context)),
    }
    return verdicts, aspect_rows, metadata


def _scalar_rows(round_id, judge_name, aspect, scores: dict[str, float], ids, reason):
    return pl.DataFrame(
        {
            "round_id": round_id,
            "completion_id": ids,
            "aspect": aspect,
            "judge": judge_name,
            "score": [scores.get(c) for c in ids],
            "failed": [c not in scores for c in ids],
            "reason": [None if c in scores else reason for c in ids],
            "digit_mass": None,
            "attempts": 1,
        },
        schema=_SCORE_SCHEMA,
    )


def _reward_model_verdicts(context, config, reward_judge: RewardModelJudge, store, round_id, pairs):
    items = _judged_items(store, round_id, pairs)
    context.log.info(f"scoring {items.height} responses with {reward_judge.name}")
    started = time.perf_counter()
    try:
        rewards = reward_judge.score(
            items["prompt"].to_list(),
            items["response"].to_list(),
            progress=progress_logger(context, "rewards"),
        )
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    scores = {
        c: float(r) for c, r in zip(items["completion_id"], rewards, strict=True) if np.isfinite(r)
    }
    ids = items["completion_id"].to_list()
    rows = _scalar_rows(round_id, reward_judge.name, "reward", scores, ids, "non-finite reward")
    verdicts = _verdicts_from_scores(
        pairs,
        scores,
        tie_margin=config.tie_margin,
        labeller=reward_judge.name,
        source="reward_model_judge",
    )
    metadata = {
        "judge": reward_judge.name,
        "judge_seconds": round(time.perf_counter() - started, 2),
        "mean_reward": float(np.mean(rewards)) if len(rewards) else 0.0,
    }
    return verdicts, rows, metadata


def _oracle_verdicts(context, config, labelling: LabellingSettings, round_id, pairs):
    if not labelling.oracle_pool:
        raise dg.Failure(
            "label source is 'oracle' but no pool file is set: set labelling.oracle_pool "
            "(AUF_ORACLE_POOL) to a file with completion_id and oracle_score"
        )
    ids = pl.concat([pairs["completion_a"], pairs["completion_b"]]).unique().sort().to_list()
    try:
        scores = oracle_scores(labelling.oracle_pool, ids)
    except PoolFileError as exc:
        raise dg.Failure(str(exc)) from exc
    if not scores:
        raise dg.Failure(
            f"none of {round_id}'s responses are in the oracle pool {labelling.oracle_pool}: "
            "read the round's responses from the same file (completions config pool_path)"
        )
    name = f"oracle:{Path(labelling.oracle_pool).name}"
    rows = _scalar_rows(round_id, name, "oracle", scores, ids, "not in the oracle pool")
    verdicts = _verdicts_from_scores(
        pairs, scores, tie_margin=config.tie_margin, labeller=name, source="oracle"
    )
    context.log.info(f"looked up {len(scores)}/{len(ids)} oracle scores in {labelling.oracle_pool}")
    return (
        verdicts,
        rows,
        {"judge": name, "oracle_pool": dg.MetadataValue.path(labelling.oracle_pool)},
    )


def _people_verdicts(context, labelling: LabellingSettings, store, round_id, pairs):
    labels = store.labels_of_round(round_id)
    current = set(pairs["pair_id"])
    orphans = labels.filter(~pl.col("pair_id").is_in(list(current))).height
    votes: dict[str, list[tuple[Vote, dict]]] = {}
    for order, row in enumerate(labels.iter_rows(named=True)):
        if row["pair_id"] in current:
            vote = Vote(row["labeller"], row["choice"], row["labelled_at"], order)
            votes.setdefault(row["pair_id"], []).append((vote, row))
    if not votes and store.count_rows("annotation_batches", round_id) == 0:
        raise dg.Failure(
            f"label source is 'people' but {round_id}'s pairs were never sent out: run the "
            "pair_selection job for this round (it writes the annotation batch), not "
            "active_round; labelled_round runs once the labels are in"
        )
    if not votes:
        raise dg.Failure(
            f"{round_id} has no labels yet: people label the pairs in "
            f"{labelling.outbox_dir / (round_id + '.jsonl')} and drop the files in "
            f"{labelling.inbox_dir} (or run `auf labels import FILE`); the labels_landed sensor "
            "starts this step when enough pairs are labelled"
        )
    verdicts = []
    for pair in pairs.iter_rows(named=True):
        given = votes.get(pair["pair_id"], [])
        res = resolve_votes([v for v, _ in given], labelling.resolution)
        chosen, rejected = _chosen(pair, res.preference)
        verdicts.append(
            {
                "pair_id": pair["pair_id"],
                "round_id": round_id,
                "prompt_id": pair["prompt_id"],
                "score_a": None,
                "score_b": None,
                "preference": res.preference,
                "chosen_completion_id": chosen,
                "rejected_completion_id": rejected,
                "labeller": "people:" + ",".join(res.voters) if res.voters else "people",
                "labelled_at": max((v.labelled_at for v, _ in given), default=None),
                "source": "people",
                "n_labels": res.n_labels,
                "votes": json.dumps(res.counts) if given else None,
                "raw_choices": ";".join(r["raw_choice"] for _, r in given) or None,
            }
        )
    metadata = {
        "judge": "people",
        "resolution": labelling.resolution,
        "labels": int(sum(len(v) for v in votes.values())),
        "annotators": int(labels["labeller"].n_unique()) if labels.height else 0,
        "labels_of_other_pairs": orphans,
    }
    if orphans:
        context.log.warning(
            f"{orphans} labels of {round_id} name pairs that are no longer selected "
            "(selected_pairs was re-materialised); they are kept but not used"
        )
    return (
        pl.DataFrame(verdicts, schema=_VERDICT_SCHEMA),
        pl.DataFrame(schema=_SCORE_SCHEMA),
        metadata,
    )


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[selected_pairs],
    group_name=GROUP,
    kinds={"transformers", "vllm", "duckdb"},
    code_version="2",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="One verdict per selected pair from the configured label source: the rubric LLM "
    "judge, a reward-model judge, a simulated oracle, or people's labels (resolved).",
)
@holds_round_chain
def judgements(
    context: dg.AssetExecutionContext,
    config: JudgementsConfig,
    judge: RubricJudge,
    reward_judge: RewardModelJudge,
    labelling: LabellingSettings,
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    pairs = store.round_rows("pairs", round_id)
    if pairs.height == 0:
        raise dg.Failure(f"{round_id} has no selected pairs: materialise selected_pairs first")
    pairs = pairs.sort("prompt_id", "pair_id")
    source = labelling.source
    if source == "llm_judge":
        rows, scores, extra = _rubric_verdicts(context, config, judge, store, round_id, pairs)
    elif source == "reward_model_judge":
        rows, scores, extra = _reward_model_verdicts(
            context, config, reward_judge, store, round_id, pairs
        )
    elif source == "oracle":
        rows, scores, extra = _oracle_verdicts(context, config, labelling, round_id, pairs)
    else:
        rows, scores, extra = _people_verdicts(context, labelling, store, round_id, pairs)
    store.replace_round_tables(round_id, {"judge_scores": scores, "judgements": rows})
    CallCache(store, round_id, "judgements").clear()
    prefs = Counter(rows["preference"].to_list())
    preview = ["prompt_id", "preference", "labeller"]
    if source != "people":
        preview[1:1] = ["score_a", "score_b"]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.height,
            "source": source,
            "labelled_pairs": prefs["a"] + prefs["b"],
            "ties": prefs["tie"],
            "failed_pairs": prefs["failed"],
            "unlabelled_pairs": prefs["unlabelled"],
            **extra,
            "preview": markdown_preview(rows.select(preview)),
        }
    )
