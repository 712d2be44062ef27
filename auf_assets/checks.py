"""Data-quality checks on each round's assets, evaluated per round partition."""

import dagster as dg

from auf_assets.core.judge_vs_people import (
    agreement_summary,
    judge_calibration,
    reward_temperature,
    rounded,
)
from auf_assets.core.methods import method_names
from auf_assets.judge_agreement import aspect_agreement, comparisons
from auf_assets.partitions import rounds_partitions
from auf_assets.round import (
    completions,
    judgements,
    reward_model,
    reward_scores,
    selected_pairs,
)
from auf_assets.round_chain import chain_report, stale_rounds
from resources.labelling import LabellingSettings
from resources.store import DuckDBStore


@dg.asset_check(
    asset=completions,
    partitions_def=rounds_partitions,
    description="Every prompt of the round has a non-empty response from each member (read "
    "from a pool file: at least two responses per prompt).",
)
def completions_complete(
    context: dg.AssetCheckExecutionContext, store: DuckDBStore
) -> dg.AssetCheckResult:
    round_id = context.partition_key
    row = store.completion_counts(round_id)
    if row["from_pool"] and row["from_pool"] == row["responses"]:
        # A pool need not answer every prompt with every model; two responses make a pair.
        missing = row["short_prompts"]
    else:
        missing = row["prompts"] * row["members"] - row["responses"]
    return dg.AssetCheckResult(
        passed=missing == 0 and row["empty"] == 0 and row["responses"] > 0,
        severity=dg.AssetCheckSeverity.ERROR if missing else dg.AssetCheckSeverity.WARN,
        metadata={"missing_responses": missing, "empty_responses": row["empty"], **row},
    )


@dg.asset_check(
    asset=reward_scores,
    partitions_def=rounds_partitions,
    description="Every response has a finite reward mean and a non-negative spread.",
)
def reward_scores_finite(
    context: dg.AssetCheckExecutionContext, store: DuckDBStore
) -> dg.AssetCheckResult:
    row = store.reward_score_counts(context.partition_key)
    return dg.AssetCheckResult(
        passed=row["bad"] == 0 and row["scored"] == row["responses"] > 0, metadata=row
    )


@dg.asset_check(
    asset=selected_pairs,
    partitions_def=rounds_partitions,
    blocking=True,
    description="One pair per prompt (policy-aware methods: at most one), of two distinct "
    "responses to that prompt.",
)
def selected_pairs_valid(
    context: dg.AssetCheckExecutionContext, store: DuckDBStore
) -> dg.AssetCheckResult:
    row = store.pair_counts(context.partition_key)
    # Policy-aware methods may leave prompts out (fraction < 1, or only identical responses).
    every_prompt = row["method"] not in method_names("policy")
    passed = (
        row["pairs"] == row["prompts_with_pairs"]
        and (row["pairs"] == row["prompts"] if every_prompt else row["pairs"] <= row["prompts"])
        and row["same_response"] == 0
        and row["foreign_response"] == 0
    )
    return dg.AssetCheckResult(passed=passed, metadata=row)


@dg.asset_check(
    asset=judgements,
    partitions_def=rounds_partitions,
    description="Every pair has a verdict; no judge's verdict rests on a missing score, no "
    "people's verdict lacks a label; failed and unlabelled pairs stay under half of the pairs.",
)
def judgements_recorded(
    context: dg.AssetCheckExecutionContext, store: DuckDBStore
) -> dg.AssetCheckResult:
    row = store.judgement_counts(context.partition_key)
    complete = (
        row["verdicts"] == row["pairs"] > 0 and row["unscored"] == 0 and row["without_labels"] == 0
    )
    mostly_judged = (row["failed"] + row["unlabelled"]) * 2 <= row["verdicts"]
    return dg.AssetCheckResult(
        passed=complete and mostly_judged,
        severity=dg.AssetCheckSeverity.ERROR if not complete else dg.AssetCheckSeverity.WARN,
        metadata=row,
    )


@dg.asset_check(
    asset=judgements,
    partitions_def=rounds_partitions,
    description="judge+people: the screening judge agrees with people on at least "
    "labelling.min_agreement of the pairs both labelled (a warning below it), with kappa, the "
    "agreement per route and per rubric aspect, and the judge's calibration. Passes with "
    "nothing to compare (another label source, or no labels yet).",
)
def judge_agreement(
    context: dg.AssetCheckExecutionContext, store: DuckDBStore, labelling: LabellingSettings
) -> dg.AssetCheckResult:
    frame = comparisons(store, labelling.resolution, [context.partition_key])
    summary = agreement_summary(frame)
    overall = summary["all"]
    if overall["pairs"] == 0:
        return dg.AssetCheckResult(
            passed=True, metadata={"compared_pairs": 0, "why": "no pair has both verdicts"}
        )
    passed = overall["accuracy"] >= labelling.min_agreement
    if not passed:
        context.log.warning(
            f"{context.partition_key}: the judge agrees with people on {overall['accuracy']:.0%} "
            f"of {overall['pairs']} pairs, under labelling.min_agreement "
            f"{labelling.min_agreement:.0%}"
        )
    calibration = [
        {
            "confidence": f"{b.lower:.1f}-{b.upper:.1f}",
            "verdicts": b.count,
            "mean_confidence": round(b.mean_confidence, 3),
            "people_agreed": round(b.observed_agreement, 3),
        }
        for b in judge_calibration(frame)
        if b.count
    ]
    exact = rounded(summary)["all"]
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "compared_pairs": overall["pairs"],
            "accuracy": exact["accuracy"],
            "kappa": exact["kappa"],
            "min_agreement": labelling.min_agreement,
            "by_route": dg.MetadataValue.json(rounded(summary)),
            "by_aspect": dg.MetadataValue.json(rounded(aspect_agreement(store, frame))),
            "calibration": dg.MetadataValue.json(calibration),
            # reward-model judge: the confidence_temperature its rewards fit people's choices at
            "fitted_confidence_temperature": reward_temperature(frame),
        },
    )


@dg.asset_check(
    asset=reward_model,
    description="The round chain is current: every round's scores and reward model were built "
    "on the checkpoint its previous round holds now, and on the judgements stored now. Fails "
    "(as a warning) after an earlier round is re-run, naming the rounds to run again in order.",
)
def round_chain_current(
    context: dg.AssetCheckExecutionContext, store: DuckDBStore
) -> dg.AssetCheckResult:
    report = chain_report(store)
    stale = stale_rounds(report)
    if stale:
        context.log.warning(
            f"{len(stale)} rounds are stale, from {stale[0]} ({report_reason(report)}): re-run "
            f"{', '.join(stale)} in this order"
        )
    return dg.AssetCheckResult(
        passed=not stale,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "rounds": len(report),
            "stale_rounds": dg.MetadataValue.json(stale),
            "first_stale_reason": report_reason(report),
            "rerun_in_order": ", ".join(stale) or "nothing",
        },
    )


def report_reason(report) -> str:
    return next((f"{link.round_id}: {link.why}" for link in report if link.stale), "")


ROUND_CHECKS = [
    round_chain_current,
    completions_complete,
    reward_scores_finite,
    selected_pairs_valid,
    judgements_recorded,
    judge_agreement,
]
