"""Jobs: ingest prompts; run a round end to end, or in the two halves people label between."""

from __future__ import annotations

import dagster as dg

from auf_assets.core.policy import PolicyLoopConfig
from auf_assets.labels import annotation_batch, judge_screening
from auf_assets.policy_loop import policy_logprobs
from auf_assets.prompts import prompt_pool
from auf_assets.round import (
    ROUND_ASSETS,
    completions,
    judgements,
    response_features,
    reward_model,
    reward_scores,
    round_prompts,
    selected_pairs,
)
from auf_assets.training import dpo_policy

# What runs before people label (the pair_selection job) and after (the labelled_round job).
# Every run of the round chain carries this tag: the run queue admits one such run at a time per
# home (the limit is in the instance's dagster.yaml, written by `resources.home`), and the store's
# chain lease stops any run that gets past the queue (the CLI, a UI materialisation of a single
# asset) while another holds the chain.
ROUND_CHAIN_TAG = "auf/chain"
ROUND_CHAIN_TAGS = {ROUND_CHAIN_TAG: "rounds"}

SELECTION_ASSETS = [
    round_prompts,
    completions,
    response_features,
    reward_scores,
    selected_pairs,
    judge_screening,
    annotation_batch,
]
LABELLED_ASSETS = [judgements, reward_model]

prompt_ingestion_job = dg.define_asset_job(
    "prompt_ingestion",
    selection=dg.AssetSelection.assets(prompt_pool),
    description="Ingest prompts into the pool (idempotent: known prompt ids are kept).",
)

active_round_job = dg.define_asset_job(
    "active_round",
    tags=ROUND_CHAIN_TAGS,
    selection=dg.AssetSelection.assets(*ROUND_ASSETS),
    description="One active round with an automatic judge: prompts -> completions -> features -> "
    "uncertainty scores -> pairs -> judgements -> reward model.",
)

pair_selection_job = dg.define_asset_job(
    "pair_selection",
    tags=ROUND_CHAIN_TAGS,
    selection=dg.AssetSelection.assets(*SELECTION_ASSETS),
    description="The first half of a round people label: prompts -> completions -> uncertainty "
    "scores -> pairs -> (judge+people: the judge's screening) -> the annotation batch in the "
    "outbox.",
)

labelled_round_job = dg.define_asset_job(
    "labelled_round",
    tags=ROUND_CHAIN_TAGS,
    selection=dg.AssetSelection.assets(*LABELLED_ASSETS),
    description="The second half, once the labels are in: judgements (resolved labels) -> "
    "reward model.",
)

# The policy loop: the round's pairs are picked by the DPO policy (selected_pairs with sharp,
# wsharp, activedpo or apl), and the round ends with the policy's DPO step, warm-started from the
# previous round's adapter, which the next round selects with.
POLICY_ROUND_CONFIG = {
    "ops": {
        "selected_pairs": {"config": {"method": "sharp"}},
        "dpo_policy": {
            "config": {"warm_start": True, "max_steps": PolicyLoopConfig().steps_per_round}
        },
    }
}

policy_round_job = dg.define_asset_job(
    "policy_round",
    tags=ROUND_CHAIN_TAGS,
    selection=dg.AssetSelection.assets(*ROUND_ASSETS, policy_logprobs, dpo_policy),
    config=POLICY_ROUND_CONFIG,
    description="One round where the DPO policy picks its own pairs: prompts -> completions -> "
    "policy log-probs -> pairs (sharp by default; wsharp, activedpo, apl) -> judgements -> "
    "reward model and the policy's DPO step (warm start).",
)

ROUND_JOBS = (active_round_job, pair_selection_job, labelled_round_job, policy_round_job)
