"""`selected_pairs`: one pair per prompt, picked by a reward-model method of the registry or,
through `auf_assets.policy_loop`, by the DPO policy."""

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field, model_validator

from auf_assets.core.methods import ROUND_FAMILIES, get_method
from auf_assets.core.prompt_matrices import by_prompt_matrices, random_pair_gap
from auf_assets.core.round_step import (
    select_with_model,
    warming_up,
)
from auf_assets.core.seeding import stable_hash, stable_seed
from auf_assets.core.settings import (
    RoundSettings,
    pipeline_methods,
    refuse_renamed,
)
from auf_assets.partitions import round_index, rounds_partitions
from auf_assets.policy_loop import policy_pairs
from auf_assets.reporting import markdown_preview
from auf_assets.round.scores import reward_scores
from auf_assets.round.shared import GROUP
from auf_assets.round_guard import holds_round_chain
from resources.store import DuckDBStore, utcnow

_ROUND = RoundSettings()  # the default preset's recipe, as in `auf simulate`


# The methods a round selects with: a fixed choice, so the launchpad refuses any other name.
class SelectedPairsConfig(dg.Config):
    method: str = Field(
        default=_ROUND.method,
        description="selection method: a reward-model or policy method of the registry "
        f"(`auf methods`: {', '.join(pipeline_methods())})",
    )
    acquisition_width: float = Field(
        default=_ROUND.acquisition_width,
        description="exploration width: bounds are mu -/+ acquisition_width * sigma",
    )
    seed: int = 0
    fraction: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="policy-aware methods: the share of the round's prompts that get a pair "
        "(the rest are not labelled)",
    )
    lam: float = Field(default=1.0, gt=0.0, description="activedpo: V = lam * I + sum phi phi^T")
    warmup_rounds: int = Field(
        default=_ROUND.warmup_rounds,
        description="the first rounds pick pairs at random while the reward model learns (the "
        "simulator's warmup_rounds)",
    )
    beta: float | None = Field(
        default=None, exclude=True, description="renamed to acquisition_width: setting it fails"
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        return refuse_renamed("selected_pairs", data)

    @model_validator(mode="after")
    def _check(self):
        # A method a round can run (the registry; oracle baselines are the simulator's), then
        # the round's settings check themselves (ranges in the message).
        get_method(self.method, families=ROUND_FAMILIES)
        _ROUND.with_overrides(
            method=self.method,
            acquisition_width=self.acquisition_width,
            warmup_rounds=self.warmup_rounds,
        )
        return self


@dg.asset(
    partitions_def=rounds_partitions,
    # policy_logprobs (auf_assets.policy_loop) is read only by the policy-aware methods.
    deps=[reward_scores, dg.AssetKey("policy_logprobs")],
    group_name=GROUP,
    kinds={"numpy", "duckdb"},
    code_version="1",
    description="One pair of responses per prompt, picked by the acquisition function (or by "
    "the DPO policy: sharp, wsharp, activedpo, apl).",
)
@holds_round_chain
def selected_pairs(
    context: dg.AssetExecutionContext, config: SelectedPairsConfig, store: DuckDBStore
) -> dg.MaterializeResult:
    round_id = context.partition_key
    try:
        family = get_method(config.method, families=ROUND_FAMILIES).family
    except ValueError as exc:
        raise dg.Failure(f"selected_pairs: {exc}") from exc
    if family == "policy":
        return _policy_selected_pairs(context, config, store, round_id)
    scores = store.round_rows("reward_scores", round_id)
    if scores.height == 0:
        raise dg.Failure(f"{round_id} has no reward scores: materialise reward_scores first")
    prompt_ids, completion_ids, (mu, sigma), mask = by_prompt_matrices(scores, ["mu", "sigma"])
    seed = stable_seed(round_id, config.seed)
    round_number = round_index(round_id)
    picks, method = select_with_model(
        config.method,
        mu,
        sigma,
        mask,
        round_number=round_number,
        warmup_rounds=config.warmup_rounds,
        beta=config.acquisition_width,
        seed=seed,
    )
    warm_up = warming_up(round_number, config.warmup_rounds)
    if warm_up:
        context.log.info(f"{round_id} is a warm-up round: pairs are picked at random")
    rows = pl.DataFrame(
        {
            "prompt_id": prompt_ids,
            "completion_a": [ids[a] for ids, (a, _) in zip(completion_ids, picks, strict=True)],
            "completion_b": [ids[b] for ids, (_, b) in zip(completion_ids, picks, strict=True)],
            "mu_a": mu[np.arange(len(picks)), picks[:, 0]],
            "mu_b": mu[np.arange(len(picks)), picks[:, 1]],
            "sigma_a": sigma[np.arange(len(picks)), picks[:, 0]],
            "sigma_b": sigma[np.arange(len(picks)), picks[:, 1]],
        }
    )
    store.replace_round("pairs", round_id, _with_pair_ids(rows, round_id, method, config, seed))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.height,
            "method": method,
            "warm_up_round": warm_up,
            "acquisition_width": config.acquisition_width,
            "responses_per_prompt": int(mask.sum(axis=1).max()),
            # The model's view of the pairs it picked against a random pick: equal while the
            # model knows nothing, apart once it has learned something to act on.
            "mean_predicted_gap": float((rows["mu_a"] - rows["mu_b"]).abs().mean()),
            "random_pair_predicted_gap": random_pair_gap(mu, mask),
            "mean_pair_sigma": float(((rows["sigma_a"] + rows["sigma_b"]) / 2).mean()),
            "preview": pair_preview(store, round_id, rows, ["mu_a", "mu_b", "sigma_a", "sigma_b"]),
        }
    )


PREVIEW_ROWS = 8


def pair_preview(
    store: DuckDBStore, round_id: str, rows: pl.DataFrame, numbers: list[str]
) -> dg.MarkdownMetadataValue:
    """The first pairs as a person reads them: the prompt and both responses (cut short, as in
    the preference_dataset preview), then the model's numbers of each response."""
    shown = rows.head(PREVIEW_ROWS).with_row_index("order")
    texts = store.round_completion_texts(round_id)
    side_a = texts.select(
        pl.col("completion_id").alias("completion_a"),
        "prompt",
        pl.col("response").alias("response_a"),
    )
    side_b = texts.select(
        pl.col("completion_id").alias("completion_b"), pl.col("response").alias("response_b")
    )
    table = (
        shown.join(side_a, on="completion_a", how="left")
        .join(side_b, on="completion_b", how="left")
        .sort("order")
        .select("prompt", "response_a", "response_b", *numbers)
    )
    return markdown_preview(table, max_rows=PREVIEW_ROWS)


def _with_pair_ids(
    rows: pl.DataFrame, round_id: str, method: str, config, seed: int, fallback: str | None = None
):
    """The stored pair rows: a stable pair id per (round, prompt, a, b) and the provenance.

    ``fallback``: NULL when ``method`` picked the pairs, else the rule that picked them instead
    because the method could not apply (a policy method's first round: "random").
    """
    return rows.with_columns(
        pair_id=pl.concat_str(
            pl.lit(round_id), "prompt_id", "completion_a", "completion_b", separator="|"
        ).map_elements(lambda s: "pr-" + stable_hash(s), return_dtype=pl.String),
        round_id=pl.lit(round_id),
        method=pl.lit(method),
        fallback=pl.lit(fallback, dtype=pl.String),
        beta=pl.lit(config.acquisition_width),  # the store's column keeps its name
        seed=pl.lit(seed, dtype=pl.Int64),
        created_at=pl.lit(utcnow()),
    )


def _policy_selected_pairs(context, config: SelectedPairsConfig, store, round_id: str):
    seed = stable_seed(round_id, config.seed)
    rows, meta = policy_pairs(
        context,
        store,
        round_id,
        config.method,
        seed=seed,
        fraction=config.fraction,
        lam=config.lam,
    )
    fallback = None if meta["fallback"] == "none" else meta["fallback"]
    store.replace_round(
        "pairs", round_id, _with_pair_ids(rows, round_id, config.method, config, seed, fallback)
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.height,
            "method": config.method,
            **meta,
            "preview": pair_preview(store, round_id, rows, ["mu_a", "mu_b"]),
        }
    )
