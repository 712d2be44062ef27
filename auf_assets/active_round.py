"""The `active_round` group: the assets of one active round, partitioned by round.

round_prompts -> completions -> reward_scores -> selected_pairs -> judgements -> reward_model, and
the next round's reward_scores reads this round's reward_model. Each asset is thin wiring: it
reads its inputs from the store, calls a pure function or a resource, and replaces its round's
rows in the store. The algorithms live in `auf_assets.core`.
"""

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field, model_validator

from auf_assets.core.judging import ASPECTS, decide_preference
from auf_assets.core.labels import Vote, resolve_votes
from auf_assets.core.methods import ROUND_FAMILIES, get_method
from auf_assets.core.principles import choose_system_prompt
from auf_assets.core.prompt_matrices import by_prompt_matrices, random_pair_gap
from auf_assets.core.response_pool import PoolFileError, oracle_scores, read_pool
from auf_assets.core.round_step import (
    ReplayBuffer,
    select_with_model,
    train_on_replay,
    warming_up,
)
from auf_assets.core.seeding import stable_hash, stable_seed
from auf_assets.core.settings import (
    DEFAULT_ROUND_PROMPTS,
    PACKAGED_LM,
    RoundSettings,
    pipeline_methods,
    refuse_renamed,
)
from auf_assets.partitions import round_index, rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.prompts import prompt_pool
from auf_assets.reporting import markdown_preview, progress_logger
from auf_assets.round_guard import holds_round_chain
from resources import home
from resources.encoder import FeatureEncoder
from resources.engine import GenerationEngine
from resources.judge import RubricJudge
from resources.labelling import LabellingSettings
from resources.ledger import StepLedger, ledger_prices
from resources.lm_types import Generation
from resources.reward_judge import RewardModelJudge
from resources.reward_model import UncertaintyModel
from resources.store import CallCache, DuckDBStore, StoreError, utcnow

GROUP = "active_round"


class RoundPromptsConfig(dg.Config):
    batch_size: int = Field(
        default=DEFAULT_ROUND_PROMPTS, ge=1, description="prompts per round (the paper: 64)"
    )
    shuffle: bool = Field(default=False, description="seeded shuffle instead of ingestion order")
    seed: int = 0
    retake: bool = Field(
        default=False,
        description="draw a new batch for a round that already holds prompts (only while no "
        "later round exists and nobody labelled its pairs; its other rows are cleared)",
    )


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[prompt_pool],
    group_name=GROUP,
    kinds={"duckdb"},
    code_version="2",
    description="The batch of prompts this round works on: taken once from the prompts no other "
    "round holds, and kept when the round is re-run.",
)
@holds_round_chain
def round_prompts(
    context: dg.AssetExecutionContext, config: RoundPromptsConfig, store: DuckDBStore
) -> dg.MaterializeResult:
    round_id = context.partition_key
    try:
        taken = store.take_round_prompts(
            round_id,
            round_index(round_id),
            config.batch_size,
            shuffle=config.shuffle,
            seed=config.seed,
            retake=config.retake,
        )
    except StoreError as exc:
        raise dg.Failure(str(exc)) from exc
    batch = taken.prompts
    if batch.height == 0:
        used = store.count_rows("prompts")
        raise dg.Failure(
            f"the prompt pool is used up: all {used} prompts belong to earlier rounds. Ingest more "
            "prompts (materialise prompt_pool with a new file) before starting another round."
        )
    if taken.kept:
        context.log.info(
            f"{round_id} keeps the {batch.height} prompts it took before (re-running a round "
            "re-runs it on its own prompts; retake=True draws new ones)"
        )
    elif batch.height < config.batch_size:
        context.log.warning(
            f"only {batch.height} unused prompts left for a batch of {config.batch_size}"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": batch.height,
            "kept_from_before": taken.kept,
            "prompts_left_after_round": taken.left,
            "preview": markdown_preview(batch),
        }
    )


# -- completions ------------------------------------------------------------------------------


class PoolMember(dg.Config):
    name: str
    model: str = Field(
        default=PACKAGED_LM,
        description="model source (local backends) or the model name the server serves (openai)",
    )
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=96, ge=1)
    style: str = Field(default="", description="extra instruction appended to the system prompt")
    backend: Literal["", "transformers", "vllm", "openai"] = Field(
        default="", description="this member's backend; empty: the engine's"
    )
    base_url: str = Field(
        default="", description="openai backend: this member's server; empty: the engine's"
    )
    api_key_env: str = Field(
        default="", description="openai backend: variable with this member's API key"
    )

    def sampling_json(self) -> str:
        """The settings that shaped this member's responses, as stored with each response."""
        keys = ("temperature", "top_p", "max_new_tokens", "style")
        return json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)


def default_pool() -> list[PoolMember]:
    """Distinct members from the packaged model: different sampling and answer styles."""
    return [
        PoolMember(name="smol-t1.0", temperature=1.0),
        PoolMember(name="smol-t0.7", temperature=0.7),
        PoolMember(name="smol-greedy", temperature=0.0),
        PoolMember(
            name="smol-brief",
            temperature=0.7,
            max_new_tokens=48,
            style="Answer in at most two sentences.",
        ),
    ]


class CompletionsConfig(dg.Config):
    members: list[PoolMember] = Field(default_factory=default_pool)
    seed: int = 0
    pool_path: str = Field(
        default="",
        description="read the round's responses from this pool file (prompt_id, prompt, "
        "completion_id, model, response) instead of generating them; members are then unused",
    )


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[round_prompts],
    group_name=GROUP,
    kinds={"transformers", "vllm", "duckdb"},
    code_version="1",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="One response per prompt from each member of the model pool.",
)
@holds_round_chain
def completions(
    context: dg.AssetExecutionContext,
    config: CompletionsConfig,
    engine: GenerationEngine,
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    prompts = store.prompts_of_round(round_id)
    if prompts.height == 0:
        raise dg.Failure(f"{round_id} has no prompts: materialise round_prompts first")
    if config.pool_path:
        return _completions_from_pool(config.pool_path, round_id, prompts, store)
    names = [m.name for m in config.members]
    if len(config.members) < 2 or len(set(names)) != len(names):
        raise dg.Failure(f"the pool needs at least two members with distinct names, got {names}")

    ledger = StepLedger(store, context.run.run_id, round_id, "completions")
    cache = CallCache(store, round_id, "completions")
    frames, seconds, gen_tokens = [], 0.0, 0
    for member in config.members:
        chosen = [
            choose_system_prompt(src, f"{pid}|{member.name}", config.seed)
            for pid, src in zip(prompts["prompt_id"], prompts["source"], strict=True)
        ]
        systems = [f"{text} {member.style}".strip() for _, text in chosen]
        conversations = [
            [{"role": "system", "content": s}, {"role": "user", "content": p}]
            for s, p in zip(systems, prompts["prompt"], strict=True)
        ]
        started = time.perf_counter()
        where = engine.placement(member.backend, member.base_url)
        with ledger.actor(member.name, member.model, **where) as usage:
            outs = _generate_resumable(
                context, engine, member, conversations, round_id, config.seed, cache, usage
            )
        seconds += time.perf_counter() - started
        gen_tokens += sum(o.completion_tokens for o in outs)
        frames.append(
            pl.DataFrame(
                {
                    "completion_id": [
                        "c-" + stable_hash(pid, member.name, o.text)
                        for pid, o in zip(prompts["prompt_id"], outs, strict=True)
                    ],
                    "round_id": round_id,
                    "prompt_id": prompts["prompt_id"],
                    "member": member.name,
                    "model": member.model,
                    "principle": [p for p, _ in chosen],
                    "system_prompt": systems,
                    "response": [o.text for o in outs],
                    "prompt_tokens": [o.prompt_tokens for o in outs],
                    "completion_tokens": [o.completion_tokens for o in outs],
                    "finish_reason": [o.finish_reason for o in outs],
                    "sampling": member.sampling_json(),
                    "created_at": utcnow(),
                },
                schema_overrides={"prompt_tokens": pl.Int32, "completion_tokens": pl.Int32},
            )
        )
    rows = pl.concat(frames)
    store.replace_round("completions", round_id, rows)
    cache.clear()
    empty = int((rows["response"].str.strip_chars() == "").sum())
    identical = rows.height - rows.select("prompt_id", "response").n_unique()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.height,
            "members": dg.MetadataValue.json(names),
            "prompt_tokens": int(rows["prompt_tokens"].sum()),
            "completion_tokens": gen_tokens,
            "generation_seconds": round(seconds, 2),
            "tokens_per_second": round(gen_tokens / seconds, 1) if seconds else 0.0,
            "hit_max_new_tokens": int((rows["finish_reason"] == "length").sum()),
            "empty_responses": empty,
            "identical_responses": identical,
            "preview": markdown_preview(
                rows.select("prompt_id", "member", "principle", "response")
            ),
            **ledger.metadata(ledger_prices(context)),
        }
    )


def _generate_resumable(
    context, engine, member, conversations, round_id, seed, cache, usage
) -> list[Generation]:
    """A member's responses, in chunks saved to the call cache as they finish: a re-run of a
    round that failed part-way asks only for the responses it does not have yet."""
    settings = member.model_dump(exclude={"name", "style", "api_key_env"})
    member_seed = stable_seed(round_id, member.name, seed)
    keys = [
        stable_hash(member.name, json.dumps(settings, sort_keys=True), member_seed, json.dumps(c))
        for c in conversations
    ]
    known = {k: Generation(**json.loads(v)) for k, v in cache.get(keys).items()}
    kept = sum(k in known for k in keys)
    if kept:
        usage.add(cached=kept)
        context.log.info(
            f"{member.name}: {kept} of {len(keys)} responses kept from an "
            "earlier attempt of this round; generating the rest"
        )
    else:
        context.log.info(f"generating {len(conversations)} responses with {member.name}")

    def ask(chunk: list[int], start: int) -> list[Generation]:
        return engine.generate(
            member.model,
            [conversations[i] for i in chunk],
            max_new_tokens=member.max_new_tokens,
            temperature=member.temperature,
            top_p=member.top_p,
            seed=member_seed + start,
            backend=member.backend,
            base_url=member.base_url,
            api_key_env=member.api_key_env,
            usage=usage,
        )

    return cache.fill(
        keys,
        known,
        ask,
        every=engine.save_every,
        dump=lambda o: json.dumps(dataclasses.asdict(o)),
        report=progress_logger(context, member.name),
    )


def _completions_from_pool(
    pool_path: str, round_id: str, prompts: pl.DataFrame, store: DuckDBStore
) -> dg.MaterializeResult:
    """The round's responses read from a precomputed pool, keeping the pool's completion ids."""
    try:
        pool = read_pool(pool_path, prompts["prompt_id"].to_list())
    except PoolFileError as exc:
        raise dg.Failure(str(exc)) from exc
    per_prompt = dict(pool.group_by("prompt_id").len().iter_rows())
    short = [pid for pid in prompts["prompt_id"] if per_prompt.get(pid, 0) < 2]
    if short:
        raise dg.Failure(
            f"the pool file {pool_path} has fewer than two responses for {len(short)} of the "
            f"round's prompts, e.g. {short[:3]}: ingest prompts from the same pool file"
        )
    rows = pool.sort("prompt_id", "model", "completion_id").select(
        "completion_id",
        pl.lit(round_id).alias("round_id"),
        "prompt_id",
        pl.col("model").alias("member"),
        "model",
        pl.lit(None, dtype=pl.String).alias("principle"),
        pl.lit(None, dtype=pl.String).alias("system_prompt"),
        "response",
        pl.lit(None, dtype=pl.Int32).alias("prompt_tokens"),
        pl.lit(None, dtype=pl.Int32).alias("completion_tokens"),
        pl.lit("pool").alias("finish_reason"),
        pl.lit(None, dtype=pl.String).alias("sampling"),
        pl.lit(utcnow()).alias("created_at"),
    )
    store.replace_round("completions", round_id, rows)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.height,
            "pool_file": dg.MetadataValue.path(pool_path),
            "models": rows["model"].n_unique(),
            "responses_per_prompt": dg.MetadataValue.json(
                {"min": min(per_prompt.values()), "max": max(per_prompt.values())}
            ),
            "empty_responses": int((rows["response"].str.strip_chars() == "").sum()),
            "preview": markdown_preview(rows.select("prompt_id", "model", "response")),
        }
    )


def _ensure_features(
    context: dg.AssetExecutionContext,
    store: DuckDBStore,
    encoder: FeatureEncoder,
    completion_ids: list[str],
    round_ids: Sequence[str],
) -> int:
    """Encode the completions (of `round_ids`) that have no features for this encoder yet;
    returns how many."""
    missing = store.missing_features(completion_ids, encoder.key)
    if not missing:
        return 0
    # The round filter spares a scan of every stored response (3x faster on 614k responses,
    # docs/scaling.md section 2.2 for the cost at 2M).
    todo = store.completion_texts(missing, round_ids)
    context.log.info(f"encoding {todo.height} responses with {encoder.key}")
    vectors = encoder.encode(
        todo["prompt"].to_list(),
        todo["response"].to_list(),
        progress=progress_logger(context, "features"),
    )
    store.add_features(todo["completion_id"].to_list(), encoder.key, vectors)
    return todo.height


# -- response features ------------------------------------------------------------------------


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[completions],
    group_name=GROUP,
    kinds={"pytorch", "numpy"},
    code_version="1",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="The encoder's feature vector of every response of the round (the reward "
    "model's input), cached under the home and reused by every later use of the response.",
)
@holds_round_chain
def response_features(
    context: dg.AssetExecutionContext, encoder: FeatureEncoder, store: DuckDBStore
) -> dg.MaterializeResult:
    round_id = context.partition_key
    ids = store.completion_ids_of_round(round_id)
    if not ids:
        raise dg.Failure(f"{round_id} has no completions: materialise completions first")
    started = time.perf_counter()
    encoded = _ensure_features(context, store, encoder, ids, [round_id])
    seconds = time.perf_counter() - started
    dim = store.feature_dim(round_id, encoder.key)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(ids),
            "encoder": encoder.key,
            "feature_dim": dim or 0,
            "encoded": encoded,
            "reused": len(ids) - encoded,
            "encode_seconds": round(seconds, 2),
            "responses_per_second": round(encoded / seconds, 1) if encoded and seconds else 0.0,
        }
    )


# -- uncertainty scores -----------------------------------------------------------------------


def _previous_model(uncertainty_model, store, round_id, encoder_key, in_dim):
    try:
        return uncertainty_model.previous_model(
            store, round_id, round_index(round_id), encoder_key, in_dim
        )
    except StoreError as exc:
        raise dg.Failure(str(exc)) from exc


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[response_features],
    group_name=GROUP,
    kinds={"pytorch", "duckdb"},
    code_version="2",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="Reward mean and spread of every response, from the previous round's reward "
    "model (fresh heads in round 1). The checkpoint used is recorded with the scores.",
)
@holds_round_chain
def reward_scores(
    context: dg.AssetExecutionContext,
    encoder: FeatureEncoder,
    uncertainty_model: UncertaintyModel,
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    rows = store.completions_of_round(round_id)
    if rows.height == 0:
        raise dg.Failure(f"{round_id} has no completions: materialise completions first")
    ids = rows["completion_id"].to_list()
    if store.missing_features(ids, encoder.key):
        raise dg.Failure(
            f"{round_id} has responses without {encoder.key} features: materialise "
            "response_features first"
        )
    features = store.load_features(ids, encoder.key)
    model, previous = _previous_model(
        uncertainty_model, store, round_id, encoder.key, features.shape[1]
    )
    mu, sigma = model.predict(features)
    scores = rows.with_columns(
        round_id=pl.lit(round_id),
        reward_model_round=pl.lit(previous and previous["round_id"], dtype=pl.String),
        reward_model_path=pl.lit(previous and previous["path"], dtype=pl.String),
        mu=pl.Series(mu, dtype=pl.Float64),
        sigma=pl.Series(sigma, dtype=pl.Float64),
    )
    store.replace_round("reward_scores", round_id, scores)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": scores.height,
            "encoder": encoder.key,
            "feature_dim": int(features.shape[1]),
            "reward_model_round": previous["round_id"] if previous else "fresh heads",
            "reward_model_checkpoint": previous["path"] if previous else "",
            "mean_mu": float(np.mean(mu)),
            "mean_sigma": float(np.mean(sigma)),
        }
    )


# -- pair selection ---------------------------------------------------------------------------


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
            "preview": markdown_preview(
                rows.select(
                    "prompt_id",
                    "completion_a",
                    "completion_b",
                    "mu_a",
                    "mu_b",
                    "sigma_a",
                    "sigma_b",
                )
            ),
        }
    )


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
    from auf_assets.policy_loop import policy_pairs

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
            "preview": markdown_preview(
                rows.select("prompt_id", "completion_a", "completion_b", "mu_a", "mu_b")
            ),
        }
    )


# -- judgements -------------------------------------------------------------------------------


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


# -- reward model -----------------------------------------------------------------------------


def replay_fingerprint(buffer: pl.DataFrame) -> str:
    """A hash of the replay buffer's pairs and verdicts (what a reward model was trained on)."""
    return stable_hash(
        *(
            f"{p}:{c}>{r}"
            for p, c, r in buffer.select(
                "pair_id", "chosen_completion_id", "rejected_completion_id"
            ).iter_rows()
        )
    )


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[judgements],
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    code_version="2",
    # It may encode the replay buffer's responses with the encoder's model: a GPU step.
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="The uncertainty-aware reward model of the round: the previous round's model "
    "trained on the replay buffer (the newest decided pairs of this and earlier rounds).",
)
@holds_round_chain
def reward_model(
    context: dg.AssetExecutionContext,
    encoder: FeatureEncoder,
    uncertainty_model: UncertaintyModel,
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    index = round_index(round_id)
    buffer = ReplayBuffer.of(store.decided_pairs(index), uncertainty_model.replay_capacity).rows
    this_round = int((buffer["round_id"] == round_id).sum()) if buffer.height else 0
    dim = store.feature_dim(round_id, encoder.key)
    if dim is None:
        raise dg.Failure(f"{round_id} has no {encoder.key} features: materialise response_features")
    model, previous = _previous_model(uncertainty_model, store, round_id, encoder.key, dim)
    prompts_done = store.prompts_judged_through(index)
    replay_rounds = sorted(set(buffer["round_id"]), key=round_index) if buffer.height else []
    metadata: dict[str, object] = {
        "base_model_round": previous["round_id"] if previous else "fresh heads",
        "base_checkpoint": previous["path"] if previous else "",
        "replay_pairs": buffer.height,
        "replay_rounds": dg.MetadataValue.json(replay_rounds),
        "new_pairs": this_round,
        "prompts_done": prompts_done,
    }
    if buffer.height:
        # Pairs of earlier rounds lack features when the encoder setting changed since.
        _ensure_features(
            context,
            store,
            encoder,
            buffer["chosen_completion_id"].to_list() + buffer["rejected_completion_id"].to_list(),
            replay_rounds,
        )
        chosen = store.load_features(buffer["chosen_completion_id"].to_list(), encoder.key)
        rejected = store.load_features(buffer["rejected_completion_id"].to_list(), encoder.key)
        context.log.info(f"training {uncertainty_model.n_heads} heads on {buffer.height} pairs")
        stats = train_on_replay(
            model, chosen, rejected, prompts_done, uncertainty_model.train_passes
        )
        mu_c, _ = model.predict(chosen)
        mu_r, _ = model.predict(rejected)
        metadata.update(
            {
                "loss_before": stats.loss_before,
                "loss_after": stats.loss_after,
                "bt_loss_before": stats.bt_before,
                "bt_loss_after": stats.bt_after,
                "train_steps": stats.steps,
                "train_seconds": round(stats.seconds, 3),
                "anchor_lambda": stats.anchor_lambda,
                "replay_accuracy": float(np.mean(mu_c > mu_r)),
            }
        )
        loss_before, loss_after = stats.loss_before, stats.loss_after
    else:
        context.log.warning(
            f"{round_id} has no labelled pairs (all ties or failures): the "
            "previous model is carried forward unchanged"
        )
        loss_before = loss_after = None
    # A new file per save, and the row moved to it in one transaction: a crash at any point
    # leaves the row and the file it names in agreement (the loser file is an orphan, removed).
    path = uncertainty_model.new_checkpoint_path(store, round_id)
    model.save(path)
    stored_path = store.relative(path)
    store.replace_round(
        "reward_models",
        round_id,
        pl.DataFrame(
            {
                "round_id": [round_id],
                "path": [stored_path],
                "encoder": [encoder.key],
                "pairs_trained": [buffer.height],
                "prompts_done": [prompts_done],
                "loss_before": [loss_before],
                "loss_after": [loss_after],
                "created_at": [utcnow()],
                "base_round": [previous["round_id"] if previous else None],
                "base_path": [previous["path"] if previous else None],
                "replay_rounds": [json.dumps(replay_rounds)],
                "replay_sha256": [replay_fingerprint(buffer)],
                "replay_capacity": [uncertainty_model.replay_capacity],
            },
            schema_overrides={
                "loss_before": pl.Float64,
                "loss_after": pl.Float64,
                "base_round": pl.String,
                "base_path": pl.String,
                "replay_capacity": pl.Int32,
            },
        ),
    )
    removed = store.remove_orphan_files(
        [uncertainty_model.checkpoint_folder(store), home.features_dir(store.root)]
    )
    if removed:
        context.log.info(f"removed {removed} files no row refers to (replaced or left by a crash)")
    metadata["checkpoint"] = dg.MetadataValue.path(store.relative(path))  # the home can move
    metadata["orphan_files_removed"] = removed
    return dg.MaterializeResult(metadata=metadata)


ROUND_ASSETS = [
    round_prompts,
    completions,
    response_features,
    reward_scores,
    selected_pairs,
    judgements,
    reward_model,
]
