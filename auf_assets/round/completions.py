"""`completions`: one response per prompt from each pool member, generated in chunks that a
re-run keeps (the call cache), or read from a precomputed pool file."""

import dataclasses
import json
import time
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from auf_assets.core.principles import choose_system_prompt
from auf_assets.core.response_pool import PoolFileError, read_pool
from auf_assets.core.seeding import stable_hash, stable_seed
from auf_assets.core.settings import (
    PACKAGED_LM,
)
from auf_assets.partitions import rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.reporting import markdown_preview, progress_logger
from auf_assets.round.prompts import round_prompts
from auf_assets.round.shared import GROUP
from auf_assets.round_guard import holds_round_chain
from resources.engine import GenerationEngine
from resources.ledger import StepLedger, ledger_prices
from resources.lm_types import Generation
from resources.store import CallCache, DuckDBStore, utcnow


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
