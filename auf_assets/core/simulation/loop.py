"""The simulated round loop (:func:`simulate`): score, select, judge and update, with evaluation
points along the way; see the package docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from ..ensemble import RewardEnsemble
from ..methods import get_method
from ..policy_selection import identical_pairs
from ..round_step import ReplayBuffer, select_with_model, select_with_policy, train_on_replay
from .config import SimulationConfig
from .evaluation import _finite_or_none, _train_eval_model, heldout_pairs, pairwise_accuracy
from .oracle import Oracle, _judge
from .pool import SimPool, sample_responses, split_prompts
from .streams import _EVAL_SEED_OFFSET, _STREAM_SELECT

#: Columns of the selected-pairs table written by a run (in this order).
PAIR_COLUMNS = (
    "prompt_id",
    "chosen_completion_id",
    "rejected_completion_id",
    "chosen_score",
    "rejected_score",
    "round",
    "method",
    "seed",
    "labels",
    "tie",
)


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class SimulationResult:
    """What :func:`simulate` returns.

    ``pairs``: the selected pairs (:data:`PAIR_COLUMNS`). ``curve``: one dict per evaluation point
    (``round``, ``prompts``, ``labels``, ``pairs``, ``ties``, ``accuracy``, ``running_accuracy``,
    ``mean_gap``, ``mean_chosen_score``, ``mean_rejected_score``, ``seconds``: the loop's wall time
    so far, evaluation excluded; accuracies are ``None`` without held-out pairs). ``info``: split
    sizes, evaluation pairs, timings.

    For analysis (not part of :meth:`to_dict`): ``pool`` is the (sampled) pool the run used, and
    ``heldout`` holds ``rows`` (its held-out response rows), ``mu`` (the last evaluation model's
    mean reward of those rows) and ``running_mu`` (the running model's; absent for baselines), so
    accuracy can be broken down, e.g. by which models a held-out pair compares.
    """

    pairs: pl.DataFrame
    curve: list[dict[str, Any]]
    config: SimulationConfig
    info: dict[str, Any]
    pool: SimPool | None = None
    heldout: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the pairs table)."""
        return {"config": self.config.to_dict(), "curve": self.curve, "info": self.info}


def _as_features(features: Any, pool: SimPool) -> np.ndarray:
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError(f"features must be a [rows, dim] matrix, got shape {arr.shape}")
    need = int(pool.feature_rows.max()) + 1
    if arr.shape[0] < need:
        raise ValueError(
            f"features have {arr.shape[0]} rows but the pool indexes row {need - 1}: compute "
            "features for the validated (unsampled) pool"
        )
    # Gather the pool's rows once, in float32 (fp16/mmap caches are fine as input).
    return np.ascontiguousarray(arr[pool.feature_rows], dtype=np.float32)


def _identical_responses(idx: np.ndarray, mask: np.ndarray, responses: list[str]) -> np.ndarray:
    """[P, N, N]: pairs of responses of one prompt with the same text (never paired)."""
    texts = [
        [responses[i] for i, m in zip(row, keep, strict=True) if m]
        for row, keep in zip(idx, mask, strict=True)
    ]
    return identical_pairs(texts, idx.shape[1])


def _trl_row(texts: tuple[list[str], list[str]], chosen: int, rejected: int) -> dict:
    prompts, responses = texts
    return {
        "prompt": [{"role": "user", "content": prompts[chosen]}],
        "chosen": [{"role": "assistant", "content": responses[chosen]}],
        "rejected": [{"role": "assistant", "content": responses[rejected]}],
    }


def _model_columns(pool: SimPool, idx: np.ndarray, name: str | None) -> np.ndarray:
    """Per prompt row of ``idx``, the column whose response is by model ``name`` (-1: none)."""
    models = np.asarray(pool.frame["model"].to_list(), dtype=object)
    hit = (idx >= 0) & (models[np.maximum(idx, 0)] == name)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1).astype(np.int64)


def simulate(
    pool: SimPool,
    features: np.ndarray,
    config: SimulationConfig,
    *,
    oracle: Oracle | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    policy: Any = None,
) -> SimulationResult:
    """Run one method on a pool (see the module docstring for the loop).

    Args:
        pool: a validated pool (the full one: ``config.responses_per_prompt`` samples from it).
        features: ``[rows, dim]`` feature matrix of the full validated pool, indexed by
            ``feature_row`` (float16/32, a memory map is fine).
        config: the run's settings.
        oracle: the judge; default an :class:`Oracle` over the pool's scores (pass your own to
            inspect the lookups; it is indexed by rows of the *sampled* pool).
        progress: called with every evaluation point as it is produced.
        policy: a :class:`~auf_assets.core.policy.PolicyLoop`: the DPO policy in the loop. The
            policy-aware methods (sharp, wsharp, activedpo, apl) select with it and need it; with
            any method it takes a DPO step on the labelled pairs after every round, and the last
            evaluation adds its held-out implicit-reward accuracy against the oracle
            (``policy_accuracy``) and the seconds spent per part (``policy_seconds``).
    """
    started = time.perf_counter()
    cfg = config
    pool = sample_responses(pool, cfg.responses_per_prompt, cfg.seed)
    x = _as_features(features, pool)
    oracle = oracle if oracle is not None else Oracle(pool.scores)
    train, heldout = split_prompts(pool.n_prompts, cfg.heldout_fraction, cfg.seed)
    n_rounds = -(-len(train) // cfg.batch_size)
    if cfg.max_rounds is not None:
        n_rounds = min(n_rounds, cfg.max_rounds)

    held_rows = pool.index[heldout][pool.index[heldout] >= 0]
    held_scores = np.zeros(pool.n_responses)
    held_scores[held_rows] = oracle.evaluation_scores(held_rows)
    ri, rj, sign = heldout_pairs(pool, heldout, held_scores, cfg.gap_threshold)
    x_held = x[held_rows]

    selection = get_method(cfg.method)
    active = selection.family == "reward_model"
    policy_aware = selection.family == "policy"
    if policy_aware and policy is None:
        raise ValueError(f"{cfg.method} selects with the DPO policy: pass a policy loop")
    texts = (
        (pool.frame["prompt"].to_list(), pool.frame["response"].to_list())
        if policy is not None
        else None
    )
    fallback_rounds = 0
    selection_seconds = 0.0
    model: RewardEnsemble | None = None
    buffer: ReplayBuffer | None = None
    if active:
        model = RewardEnsemble(x.shape[1], replace(cfg.ensemble, seed=int(cfg.seed)))
        buffer = ReplayBuffer(cfg.ensemble.replay_capacity)
    rng = np.random.default_rng([int(cfg.seed), _STREAM_SELECT])

    chosen_rows: list[np.ndarray] = []
    rejected_rows: list[np.ndarray] = []
    chosen_scores: list[np.ndarray] = []
    rejected_scores: list[np.ndarray] = []
    tie_flags: list[np.ndarray] = []
    label_counts: list[np.ndarray] = []
    round_of: list[np.ndarray] = []
    prompt_of: list[np.ndarray] = []
    curve: list[dict[str, Any]] = []
    loop_seconds = 0.0
    eval_seconds = 0.0
    prompts_done = 0
    last_eval: dict[str, np.ndarray] = {}

    def evaluate(round_no: int) -> None:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        c = np.concatenate(chosen_rows) if chosen_rows else np.empty(0, dtype=np.int64)
        r = np.concatenate(rejected_rows) if rejected_rows else np.empty(0, dtype=np.int64)
        ties = np.concatenate(tie_flags) if tie_flags else np.empty(0, dtype=bool)
        labels = int(sum(int(lc.sum()) for lc in label_counts))
        sc = np.concatenate(chosen_scores) if chosen_scores else np.empty(0)
        sr = np.concatenate(rejected_scores) if rejected_scores else np.empty(0)
        eval_model = _train_eval_model(
            x,
            c[~ties],
            r[~ties],
            cfg.eval_model,
            int(cfg.seed) + _EVAL_SEED_OFFSET,
            prompts_done,
        )
        mu = np.zeros(pool.n_responses)
        mu[held_rows] = eval_model.predict(x_held)[0]
        last_eval["mu"] = mu[held_rows]
        point: dict[str, Any] = {
            "round": round_no,
            "prompts": prompts_done,
            "labels": labels,
            "pairs": int(len(c)),
            "ties": int(ties.sum()),
            "accuracy": _finite_or_none(pairwise_accuracy(mu, ri, rj, sign)),
            "running_accuracy": None,
            "mean_gap": float(np.mean(sc - sr)) if len(c) else None,
            "mean_chosen_score": float(np.mean(sc)) if len(c) else None,
            "mean_rejected_score": float(np.mean(sr)) if len(c) else None,
            "seconds": round(loop_seconds, 4),
        }
        if policy is not None and round_no == n_rounds:
            mu_pol = np.zeros(pool.n_responses)
            assert texts is not None
            mu_pol[held_rows], _ = policy.implicit_rewards(
                [texts[0][i] for i in held_rows],
                [texts[1][i] for i in held_rows],
                part="evaluation",
            )
            point["policy_accuracy"] = _finite_or_none(pairwise_accuracy(mu_pol, ri, rj, sign))
            point["policy_seconds"] = {
                **{k: round(v, 2) for k, v in policy.timings.items()},
                "selection": round(selection_seconds, 2),
            }
        if model is not None:
            mu_run = np.zeros(pool.n_responses)
            mu_run[held_rows] = model.predict(x_held)[0]
            point["running_accuracy"] = _finite_or_none(pairwise_accuracy(mu_run, ri, rj, sign))
            last_eval["running_mu"] = mu_run[held_rows]
        curve.append(point)
        eval_seconds += time.perf_counter() - t0
        if progress is not None:
            progress(point)

    for rnd in range(n_rounds):
        t0 = time.perf_counter()
        batch = train[rnd * cfg.batch_size : (rnd + 1) * cfg.batch_size]
        idx = pool.index[batch]
        mask = idx >= 0
        rows = np.arange(len(batch))
        if policy_aware:
            t_sel = time.perf_counter()
            policy_before = sum(policy.timings.values())
            flat = idx[mask]
            assert texts is not None
            prompts_t = [texts[0][i] for i in flat]
            responses_t = [texts[1][i] for i in flat]
            rewards = np.zeros(idx.shape)
            rewards[mask], scored = policy.implicit_rewards(prompts_t, responses_t)
            usable = mask.copy()
            usable[mask] = scored > 0  # a prompt that fills max_length leaves nothing to score
            gradients = None
            if "gradients" in selection.needs and policy.rounds_trained > 0:
                g = policy.gradient_features(prompts_t, responses_t)
                gradients = np.zeros((*idx.shape, g.shape[1]), dtype=np.float32)
                gradients[mask] = g
            picked = select_with_policy(
                cfg.method,
                rewards,
                usable,
                seed=rng,
                identical=_identical_responses(idx, mask, texts[1]),
                gradients=gradients,
                v_inv=policy.v_inv,
                lam=policy.config.lam,
                **cfg.method_options,
            )
            if picked.v_inv is not None:
                policy.v_inv = picked.v_inv
            fallback_rounds += picked.fallback is not None
            keep = picked.selected
            batch, idx, picks, rows = batch[keep], idx[keep], picked.picks[keep], rows[keep]
            rows = np.arange(len(batch))
            a, b = idx[rows, picks[:, 0]], idx[rows, picks[:, 1]]
            c, r, s_c, s_r, tie = _judge(oracle, a, b)
            labels = np.full(len(batch), 2, dtype=np.int64)
            # the rule's own time: the policy's passes are counted in its timings
            policy_spent = sum(policy.timings.values()) - policy_before
            selection_seconds += time.perf_counter() - t_sel - policy_spent
        elif active:
            assert model is not None and buffer is not None
            mu = np.zeros(idx.shape)
            sigma = np.zeros(idx.shape)
            mu[mask], sigma[mask] = model.predict(x[idx[mask]])
            picks, _ = select_with_model(
                cfg.method,
                mu,
                sigma,
                mask,
                round_number=rnd + 1,
                warmup_rounds=cfg.warmup_rounds,
                beta=cfg.acquisition_width,
                seed=rng,
                options=cfg.method_options,
            )
            a, b = idx[rows, picks[:, 0]], idx[rows, picks[:, 1]]
            c, r, s_c, s_r, tie = _judge(oracle, a, b)
            labels = np.full(len(batch), 2, dtype=np.int64)
        else:
            round_scores = np.zeros(idx.shape)
            round_scores[mask] = oracle.reveal(idx[mask])
            kwargs: dict[str, Any] = {}
            if "model_names" in selection.needs:
                kwargs = {
                    "strong_index": _model_columns(pool, idx, cfg.strong_model),
                    "weak_index": _model_columns(pool, idx, cfg.weak_model),
                }
            picks, labels = selection.select(round_scores, seed=rng, mask=mask, **kwargs)
            c, r = idx[rows, picks[:, 0]], idx[rows, picks[:, 1]]
            s_c, s_r = round_scores[rows, picks[:, 0]], round_scores[rows, picks[:, 1]]
            tie = s_c == s_r
            if selection.labels_per_prompt == "0":
                tie = np.zeros(len(batch), dtype=bool)  # no label read: nothing can tie
        prompts_done += len(batch)
        chosen_rows.append(c)
        rejected_rows.append(r)
        chosen_scores.append(s_c)
        rejected_scores.append(s_r)
        tie_flags.append(tie)
        label_counts.append(labels)
        round_of.append(np.full(len(batch), rnd + 1, dtype=np.int64))
        prompt_of.append(batch)
        if active:
            assert model is not None and buffer is not None
            keep = ~tie
            buffer.add(pl.DataFrame({"chosen": c[keep], "rejected": r[keep]}))
            if len(buffer):
                held_c, held_r = buffer.arrays("chosen", "rejected")
                train_on_replay(model, x[held_c], x[held_r], prompts_done, cfg.train_passes)
        if policy is not None:
            assert texts is not None
            decided = [
                (cc, rr)
                for cs, rs, ts in zip(chosen_rows, rejected_rows, tie_flags, strict=True)
                for cc, rr, t in zip(cs, rs, ts, strict=True)
                if not t
            ]
            if decided:
                policy.train([_trl_row(texts, cc, rr) for cc, rr in decided])
        loop_seconds += time.perf_counter() - t0
        if (rnd + 1) % cfg.eval_every == 0 or rnd + 1 == n_rounds:
            evaluate(rnd + 1)
    if n_rounds == 0:
        evaluate(0)

    c = np.concatenate(chosen_rows) if chosen_rows else np.empty(0, dtype=np.int64)
    r = np.concatenate(rejected_rows) if rejected_rows else np.empty(0, dtype=np.int64)
    ids = pool.frame["completion_id"].to_numpy()
    prompt_rows = np.concatenate(prompt_of) if prompt_of else np.empty(0, dtype=np.int64)
    pairs = pl.DataFrame(
        {
            "prompt_id": [pool.prompt_ids[p] for p in prompt_rows],
            "chosen_completion_id": ids[c].tolist() if len(c) else [],
            "rejected_completion_id": ids[r].tolist() if len(r) else [],
            "chosen_score": np.concatenate(chosen_scores) if chosen_scores else np.empty(0),
            "rejected_score": np.concatenate(rejected_scores) if rejected_scores else np.empty(0),
            "round": np.concatenate(round_of) if round_of else np.empty(0, dtype=np.int64),
            "method": [cfg.method] * len(c),
            "seed": np.full(len(c), int(cfg.seed), dtype=np.int64),
            "labels": np.concatenate(label_counts) if label_counts else np.empty(0, np.int64),
            "tie": np.concatenate(tie_flags) if tie_flags else np.empty(0, dtype=bool),
        },
        schema={
            "prompt_id": pl.String,
            "chosen_completion_id": pl.String,
            "rejected_completion_id": pl.String,
            "chosen_score": pl.Float64,
            "rejected_score": pl.Float64,
            "round": pl.Int64,
            "method": pl.String,
            "seed": pl.Int64,
            "labels": pl.Int64,
            "tie": pl.Boolean,
        },
    )
    info = {
        "pool": pool.name,
        "prompts": pool.n_prompts,
        "responses": pool.n_responses,
        "feature_dim": int(x.shape[1]),
        "train_prompts": int(len(train)),
        "heldout_prompts": int(len(heldout)),
        "heldout_eval_pairs": int(len(ri)),
        "rounds": n_rounds,
        "labels": int(pairs["labels"].sum()) if pairs.height else 0,
        "loop_seconds": round(loop_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    if policy is not None:
        info["policy"] = {
            "config": policy.config.to_dict(),
            "fallback_rounds": fallback_rounds,
            "seconds": {k: round(v, 2) for k, v in policy.timings.items()},
            "selection_seconds": round(selection_seconds, 2),
        }
    return SimulationResult(pairs, curve, cfg, info, pool, {"rows": held_rows, **last_eval})
