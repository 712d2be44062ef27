"""The policy loop: the policy being aligned picks its own pairs (SHARP, W-SHARP, ActiveDPO, APL).

A round in this mode (`policy_round` job) is the active round plus two assets:

- `policy_logprobs` (round k): for every response of the round, log pi(y|x) under the newest DPO
  adapter (round k-1's `dpo_policy`) and log pi_ref(y|x) under the base model, the reference
  cached per (base model, completion, max_length) in the store and never recomputed; with
  `gradient_features`, ActiveDPO's projected LoRA gradients too (one file per round).
- `dpo_policy` (round k, group `training`): the round's DPO step, warm-started from round k-1's
  adapter, which round k+1 then selects with.

`selected_pairs` with a policy-aware method reads `policy_logprobs` (see :func:`policy_pairs`);
round 1 (no adapter yet: pi == pi_ref, every margin 0) falls back to random pairs (the pairs'
`fallback` column says "random"), and identical responses are never paired. The rules are
:mod:`auf_assets.core.policy_selection` (found through :mod:`auf_assets.core.methods`); the
scoring is :mod:`auf_assets.core.policy`.
"""

import time
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from auf_assets.core.methods import get_method
from auf_assets.core.policy import PolicyLoopConfig, PolicyScorer, conversation
from auf_assets.core.policy_selection import CountSketch, identical_pairs
from auf_assets.core.prompt_matrices import by_prompt_matrices
from auf_assets.core.round_step import select_with_policy
from auf_assets.partitions import round_index, rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.reporting import progress_logger
from auf_assets.round_guard import holds_round_chain
from resources import home
from resources.store import DuckDBStore, utcnow
from resources.training import TrainingResource

GROUP = "policy_loop"
_LOOP = PolicyLoopConfig()


class PolicyLogprobsConfig(dg.Config):
    gradient_features: bool = Field(
        default=False,
        description="also compute ActiveDPO's projected LoRA gradients (one backward pass per "
        "response; needed by selected_pairs with method activedpo)",
    )
    sketch_dim: int = Field(default=_LOOP.sketch_dim, ge=1, description="projected dimension")
    sketch_seed: int = Field(default=_LOOP.sketch_seed, description="the projection's seed")
    max_length: int = Field(
        default=384, ge=16, description="tokens of prompt + response scored (longer: cut)"
    )
    batch_size: int = Field(default=8, ge=1)


def _policy_adapter(store: DuckDBStore, round_id: str) -> tuple[str | None, Path | None]:
    """The adapter round `round_id` selects with: the previous round's `dpo_policy`.

    A round with no policy before it (round 1, or the first policy round of a home whose earlier
    rounds selected with the reward model) starts from the base model. A later round whose
    previous round has no policy while an earlier one does fails and names it: a skipped DPO step
    would silently select with a stale policy.
    """
    index = round_index(round_id)
    previous = store.previous_round(index)
    record = store.checkpoint("dpo_policy", previous) if previous else None
    if record is None:
        earlier = [r for r in store.checkpoint_rounds("dpo_policy") if round_index(r) < index]
        if earlier:
            raise dg.Failure(
                f"{round_id} selects with the DPO policy of {previous}, which has none: "
                f"materialise {previous}'s dpo_policy (the policy_round job does), then run "
                f"{round_id} again"
            )
        return None, None
    path = store.resolve(record["path"])
    if not (path / "adapter_config.json").is_file():
        raise dg.Failure(f"the dpo_policy of {previous} is recorded at {path}, but it is missing")
    return previous, path


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[dg.AssetKey("completions")],
    group_name=GROUP,
    kinds={"pytorch", "peft", "duckdb"},
    code_version="1",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="log pi(y|x) under the newest DPO adapter and log pi_ref(y|x) under the base "
    "(cached per completion) for every response of the round; optionally ActiveDPO's gradients.",
)
@holds_round_chain
def policy_logprobs(
    context: dg.AssetExecutionContext,
    config: PolicyLogprobsConfig,
    training: TrainingResource,
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    rows = store.round_rows("completions", round_id).sort("prompt_id", "completion_id")
    if rows.height == 0:
        raise dg.Failure(f"{round_id} has no completions: materialise completions first")
    prompts = store.prompts_of_round(round_id)
    prompt_text = dict(zip(prompts["prompt_id"], prompts["prompt"], strict=True))
    turns = [
        conversation(prompt_text[p], r)
        for p, r in zip(rows["prompt_id"], rows["response"], strict=True)
    ]
    policy_round, adapter = _policy_adapter(store, round_id)
    settings = training.settings("policy")
    base = training.base_dir("policy")
    scorer = PolicyScorer(
        base,
        adapter,
        lora_r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        device=training.device,
        max_length=config.max_length,
        batch_size=config.batch_size,
    )
    ids = rows["completion_id"].to_list()
    started = time.perf_counter()
    known = store.reference_logprobs(training.base_model, ids, config.max_length)
    missing = [i for i, cid in enumerate(ids) if cid not in known]
    if missing:
        context.log.info(f"reference log-probs of {len(missing)} new responses")
        values, tokens = scorer.logps(
            [turns[i][0] for i in missing],
            [turns[i][1] for i in missing],
            reference=True,
            progress=progress_logger(context, "reference"),
        )
        fresh = pl.DataFrame(
            {
                "base_model": training.base_model,
                "completion_id": [ids[i] for i in missing],
                "max_length": config.max_length,
                "logp": values,
                "tokens": tokens,
            }
        )
        store.add_reference_logprobs(fresh)
        known.update(
            {ids[i]: (float(v), int(t)) for i, v, t in zip(missing, values, tokens, strict=True)}
        )
    ref = np.array([known[c][0] for c in ids])
    tokens = np.array([known[c][1] for c in ids], dtype=np.int64)
    reference_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if adapter is None:
        policy = ref  # no DPO step yet: the policy is the reference
    else:
        context.log.info(f"policy log-probs under {policy_round}'s adapter")
        policy, _ = scorer.logps(
            [t[0] for t in turns], [t[1] for t in turns], progress=progress_logger(context, "pi")
        )
    policy_seconds = time.perf_counter() - started

    gradient_file, sketch_id, gradient_seconds = None, None, 0.0
    if config.gradient_features and adapter is not None:
        started = time.perf_counter()
        sketch = CountSketch(scorer.n_lora_parameters(), config.sketch_dim, config.sketch_seed)
        context.log.info(
            f"gradient features of {len(ids)} responses ({sketch.n_params} LoRA parameters -> "
            f"{sketch.dim})"
        )
        grads = scorer.gradient_features(
            [t[0] for t in turns],
            [t[1] for t in turns],
            sketch,
            training.policy_dpo_beta,
            progress=progress_logger(context, "gradients"),
        )
        folder = home.policy_dir(store.root) / "gradients"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{round_id}.{uuid.uuid4().hex[:12]}.npy"
        np.save(path, grads)
        gradient_file, sketch_id = store.relative(path), sketch.fingerprint
        gradient_seconds = time.perf_counter() - started
    elif config.gradient_features:
        context.log.info("round 1: no adapter yet, so no gradient features (selection is random)")

    frame = pl.DataFrame(
        {
            "round_id": round_id,
            "completion_id": ids,
            "prompt_id": rows["prompt_id"],
            "logp_policy": policy,
            "logp_reference": ref,
            "tokens": tokens,
            "beta": training.policy_dpo_beta,
            "policy_round": policy_round,
            "adapter_path": store.relative(adapter) if adapter else None,
            "gradient_file": gradient_file,
            "gradient_row": list(range(len(ids))) if gradient_file else None,
            "sketch": sketch_id,
        },
        schema_overrides={
            "policy_round": pl.String,
            "adapter_path": pl.String,
            "gradient_file": pl.String,
            "gradient_row": pl.Int32,
            "sketch": pl.String,
            "tokens": pl.Int32,
        },
    )
    store.replace_round("policy_logprobs", round_id, frame)
    reward = training.policy_dpo_beta * (policy - ref)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": frame.height,
            "response_tokens": int(tokens.sum()),
            "policy_round": policy_round or "base (no DPO step yet: pi == pi_ref)",
            "reference_computed": len(missing),
            "reference_cached": len(ids) - len(missing),
            "reference_seconds": round(reference_seconds, 2),
            "policy_seconds": round(policy_seconds, 2),
            "gradient_seconds": round(gradient_seconds, 2),
            "gradient_features": gradient_file is not None,
            "mean_implicit_reward": float(np.mean(reward)),
            "implicit_reward_spread": float(np.std(reward)),
        }
    )


# -- selection ----------------------------------------------------------------------------------


def _previous_v_inv(store: DuckDBStore, round_id: str, sketch: str | None) -> np.ndarray | None:
    """ActiveDPO's V^-1 after the previous round (None: start from I / lambda)."""
    previous = store.previous_round(round_index(round_id))
    if previous is None:
        return None
    state = store.round_rows("policy_selection_state", previous)
    if state.height == 0 or state["v_inv_path"][0] is None or state["sketch"][0] != sketch:
        return None  # no earlier state, or another projection: V restarts
    path = store.resolve(state["v_inv_path"][0])
    return np.load(path) if path.is_file() else None


def policy_pairs(
    context: dg.AssetExecutionContext,
    store: DuckDBStore,
    round_id: str,
    method: str,
    *,
    seed: int,
    fraction: float,
    lam: float,
) -> tuple[pl.DataFrame, dict]:
    """The round's pairs by a policy-aware rule (rows like selected_pairs'), and metadata."""
    scores = store.round_rows("policy_logprobs", round_id)
    if scores.height == 0:
        raise dg.Failure(
            f"{method} selects with the DPO policy: materialise {round_id}'s policy_logprobs "
            "first (the policy_round job does)"
        )
    texts = dict(
        store.round_rows("completions", round_id).select("completion_id", "response").iter_rows()
    )
    if set(scores["completion_id"]) != set(texts):
        raise dg.Failure(
            f"{round_id}'s policy_logprobs scored other responses than its completions (they "
            "were generated again since): materialise policy_logprobs again"
        )
    # A response whose prompt alone fills max_length has no scored token: never paired.
    unscored = int((scores["tokens"] == 0).sum())
    scores = scores.filter(pl.col("tokens") > 0).with_columns(
        reward=pl.col("beta") * (pl.col("logp_policy") - pl.col("logp_reference")),
        row=pl.col("gradient_row").fill_null(-1),
    )
    if scores.height == 0:
        raise dg.Failure(
            f"no response of {round_id} could be scored: every prompt fills policy_logprobs' "
            "max_length; raise it"
        )
    prompt_ids, ids, (reward, grow), mask = by_prompt_matrices(scores, ["reward", "row"], [0, -1])
    grow = grow.astype(np.int64)
    gradients, sketch, v_inv = None, None, None
    needs_gradients = "gradients" in get_method(method, families=("policy",)).needs
    if needs_gradients:
        files = scores["gradient_file"].drop_nulls().unique().to_list()
        if files:
            matrix = np.load(store.resolve(files[0]))
            gradients = np.zeros((*reward.shape, matrix.shape[1]), dtype=np.float32)
            gradients[mask] = matrix[grow[mask]]
            sketch = scores["sketch"].drop_nulls()[0]
            v_inv = _previous_v_inv(store, round_id, sketch)
        elif scores["policy_round"].drop_nulls().len():
            raise dg.Failure(
                f"{method} needs gradient features: materialise {round_id}'s policy_logprobs "
                "with gradient_features: true"
            )
    started = time.perf_counter()
    picked = select_with_policy(
        method,
        reward,
        mask,
        seed=seed,
        identical=identical_pairs([[texts[c] for c in row] for row in ids], reward.shape[1]),
        fraction=fraction,
        gradients=gradients,
        v_inv=v_inv,
        lam=lam,
    )
    seconds = time.perf_counter() - started
    keep = np.flatnonzero(picked.selected)
    a, b = picked.picks[keep, 0], picked.picks[keep, 1]
    rows = pl.DataFrame(
        {
            "prompt_id": [prompt_ids[p] for p in keep],
            "completion_a": [ids[p][i] for p, i in zip(keep, a, strict=True)],
            "completion_b": [ids[p][j] for p, j in zip(keep, b, strict=True)],
            "mu_a": reward[keep, a],
            "mu_b": reward[keep, b],
            "sigma_a": np.zeros(len(keep)),
            "sigma_b": np.zeros(len(keep)),
        },
        schema_overrides={"mu_a": pl.Float64, "mu_b": pl.Float64},
    )
    state_path = None
    if picked.v_inv is not None:
        folder = home.policy_dir(store.root) / "state"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{round_id}.{uuid.uuid4().hex[:12]}.v_inv.npy"
        np.save(path, picked.v_inv)
        state_path = store.relative(path)
    store.replace_round(
        "policy_selection_state",
        round_id,
        pl.DataFrame(
            {
                "round_id": [round_id],
                "method": [method],
                "v_inv_path": [state_path],
                "sketch": [sketch],
                "created_at": [utcnow()],
            },
            schema_overrides={"v_inv_path": pl.String, "sketch": pl.String},
        ),
    )
    margins = np.abs(reward[keep, a] - reward[keep, b])
    if picked.fallback:
        why = (
            "no gradient features yet (round 1) or no usable gradient differences"
            if needs_gradients
            else "every implicit margin is 0 (no DPO step yet: the policy is the reference)"
        )
        context.log.info(f"{method}: {why}: pairs are picked at random")
    meta = {
        "fallback": picked.fallback or "none",
        "prompts_without_pair": int(len(prompt_ids) - len(keep)),
        "responses_not_scored": unscored,
        "mean_abs_implicit_margin": float(margins.mean()) if len(keep) else 0.0,
        "selection_seconds": round(seconds, 3),
        "policy_round": scores["policy_round"].drop_nulls().first() or "base",
    }
    return rows, meta


POLICY_ASSETS = [policy_logprobs]
