"""Pair selection driven by a DPO-trained policy instead of a reward-model ensemble.

A DPO policy ``pi`` with reference ``pi_ref`` defines the implicit reward
``r(x, y) = beta_dpo * (log pi(y|x) - log pi_ref(y|x))`` and, for a pair, the implicit margin
``Delta = r1 - r2``. The rules here turn those margins (or reward gradients) into one pair per
prompt:

* ``sharp`` / ``wsharp`` (SHARP / W-SHARP): score a pair by a Sharpe ratio of the "flip" bet.
  With ``p2 = sigmoid(r2 - r1)`` and ``flip = |1 - 1/p2| = e^Delta`` the SHARP repo computes
  ``SR = (1 + flip) / |1 - flip|`` (= ``coth(|Delta|/2)``) and the weighted
  ``SR = m / sqrt(p1 (1-m)^2 + p2 (flip-m)^2)`` with ``p1 = 1 - p2``, ``m = p1 + p2 flip``
  (= ``1/|sinh(Delta/2)|``). Both fall with ``|Delta|``: the least certain pair wins, and
  ``Delta = 0`` scores ``+inf``. The literal formulas are kept next to the stable closed forms so
  the tests can check one against the other.
* ``apl``: the opposite margin rule: keep the prompts whose reward softmax has the highest
  entropy, then take each one's largest-``|Delta|`` pair.
* ``activedpo``: ``phi = g1 - g2`` from per-response projected reward gradients, normalised;
  greedily take the pair maximising ``sqrt(phi^T V^-1 phi)``, ``V = lam I + sum phi phi^T``,
  updating ``V^-1`` by Sherman-Morrison after each pick. ``V^-1`` is returned so the caller can
  carry it to the next round.

:class:`CountSketch` is the seeded random projection the caller uses to shrink per-response
gradients to ``d`` dimensions; it is reproducible across processes for a seed.

Everything is numpy-only so it runs (and is tested) without torch or Dagster.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .acquisition import _as_rng
from .acquisition import check_bool as _check_bool

__all__ = [
    "ACTIVEDPO_TIE_RTOL",
    "POLICY_RULES",
    "CountSketch",
    "PolicySelection",
    "candidate_pairs",
    "identical_pairs",
    "implicit_rewards",
    "prompt_entropy",
    "select_policy_pairs",
    "sharpe_ratio",
    "sharpe_ratio_from_probabilities",
    "weighted_sharpe_ratio",
    "weighted_sharpe_ratio_from_probabilities",
]

#: The built-in policy-aware rules of :func:`select_policy_pairs`. The registry
#: (:mod:`auf_assets.core.methods`) lists them with what they need and a description.
POLICY_RULES = ("sharp", "wsharp", "activedpo", "apl")

#: ActiveDPO treats criterion values within this relative distance of the best as tied, so that
#: float noise (unit vectors whose norms differ in the last bit) does not override the seed.
ACTIVEDPO_TIE_RTOL = 1e-9
#: ActiveDPO builds pair differences this many at a time (bounds memory to chunk x d floats).
_PAIR_CHUNK = 4096


# ---------------------------------------------------------------------------------------------
# Scores


def implicit_rewards(logp_policy: np.ndarray, logp_ref: np.ndarray, beta: float) -> np.ndarray:
    """DPO implicit reward ``beta * (log pi - log pi_ref)``; shapes must match exactly."""
    lp = np.asarray(logp_policy, dtype=np.float64)
    lr = np.asarray(logp_ref, dtype=np.float64)
    if lp.shape != lr.shape:
        raise ValueError(f"logp_policy has shape {lp.shape} but logp_ref has shape {lr.shape}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    return beta * (lp - lr)


def sharpe_ratio(delta: np.ndarray) -> np.ndarray:
    """``coth(|Delta|/2)`` written as ``(2 + expm1(-|d|)) / -expm1(-|d|)``: exact near 0, no
    overflow for large ``|d|`` (tends to 1), ``+inf`` at 0."""
    a = np.abs(np.asarray(delta, dtype=np.float64))
    em = np.expm1(-a)  # in (-1, 0], -0.0 at a == 0
    with np.errstate(divide="ignore"):
        return (2.0 + em) / -em


def weighted_sharpe_ratio(delta: np.ndarray) -> np.ndarray:
    """``1/|sinh(Delta/2)|`` written as ``2 exp(-|d|/2) / -expm1(-|d|)``: no overflow, tends to
    0 for large ``|d|``, ``+inf`` at 0."""
    a = np.abs(np.asarray(delta, dtype=np.float64))
    with np.errstate(divide="ignore"):
        return 2.0 * np.exp(-0.5 * a) / -np.expm1(-a)


def _literal_sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def sharpe_ratio_from_probabilities(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """The SHARP repo's literal Sharpe ratio; the reference :func:`sharpe_ratio` is tested
    against (it loses precision for large margins, so selection uses the closed form)."""
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    p2 = _literal_sigmoid(r2 - r1)
    with np.errstate(divide="ignore", invalid="ignore"):
        flip = np.abs(1.0 - 1.0 / p2)
        return (1.0 + flip) / np.abs(1.0 - flip)


def weighted_sharpe_ratio_from_probabilities(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """The SHARP repo's literal weighted Sharpe ratio (reference for
    :func:`weighted_sharpe_ratio`)."""
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    p2 = _literal_sigmoid(r2 - r1)
    p1 = 1.0 - p2
    with np.errstate(divide="ignore", invalid="ignore"):
        flip = np.abs(1.0 - 1.0 / p2)
        m = p1 + p2 * flip
        return m / np.sqrt(p1 * (1.0 - m) ** 2 + p2 * (flip - m) ** 2)


def prompt_entropy(rewards: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Entropy (nats) of the softmax over each prompt's real responses' rewards, ``[B, N] ->
    [B]``: APL's "how undecided is the policy on this prompt". Rows with <= 1 response give 0."""
    r = _check_matrix("rewards", rewards)
    m = _check_bool("mask", mask, r.shape)
    _check_finite_where("rewards", r, m)
    z = np.where(m, r, -np.inf)
    top = np.max(z, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)  # empty rows
    z = np.where(m, z - top, -np.inf)
    with np.errstate(divide="ignore"):
        log_norm = np.log(np.sum(np.exp(z), axis=1, keepdims=True))
    logp = np.where(m, z - log_norm, 0.0)
    h = -np.sum(np.where(m, np.exp(logp) * logp, 0.0), axis=1)
    return np.maximum(h, 0.0)


def identical_pairs(texts: list[list[str]], width: int) -> np.ndarray:
    """``[B, width, width]`` bool: which responses of a prompt have the same text (``texts``:
    each prompt's response texts in column order; missing columns stay False)."""
    out = np.zeros((len(texts), width, width), dtype=bool)
    for p, row in enumerate(texts):
        for i, a in enumerate(row):
            for j in range(i + 1, len(row)):
                if a == row[j]:
                    out[p, i, j] = out[p, j, i] = True
    return out


def candidate_pairs(n: int) -> np.ndarray:
    """All ``i < j`` index pairs of ``n`` responses, row-major, as int64 ``[n(n-1)/2, 2]``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    i, j = np.triu_indices(int(n), k=1)
    return np.stack([i, j], axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_matrix(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [B, N] array, got shape {arr.shape}")
    return arr


def _check_finite_where(name: str, x: np.ndarray, where: np.ndarray) -> None:
    bad = where & ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{name} is not finite at real entry {idx}: {x[idx]}")


# ---------------------------------------------------------------------------------------------
# Selection


@dataclass
class PolicySelection:
    """Result of :func:`select_policy_pairs`.

    ``picks``: int64 ``[B, 2]`` with ``i < j``, ``(-1, -1)`` where the prompt got no pair.
    ``selected``: bool ``[B]``. ``scores``: float ``[B]``, the winning pair's score (the Sharpe
    ratio for sharp/wsharp, ``|Delta|`` for apl, ``sqrt(phi^T V^-1 phi)`` at pick time for
    activedpo); nan where no pair was chosen or the pick was random. ``fallback``: ``"random"``
    when nothing distinguished the pairs (all margins 0, or no usable gradients). ``v_inv``:
    activedpo's updated ``V^-1`` (None for the other methods).
    """

    picks: np.ndarray
    selected: np.ndarray
    scores: np.ndarray
    fallback: str | None = None
    v_inv: np.ndarray | None = None


def _n_keep(fraction: float, n_eligible: int) -> int:
    """``max(1, round(fraction * n))`` with half rounded up (not banker's rounding)."""
    if n_eligible == 0:
        return 0
    return min(n_eligible, max(1, math.floor(fraction * n_eligible + 0.5)))


def _best_pair(primary: np.ndarray, valid: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per row, the valid pair with the largest ``primary``; exact ties go to the largest
    random key, i.e. uniformly at random. Needs at least one pair column; rows without a valid
    pair return an arbitrary index (the caller never uses it)."""
    v = np.where(valid, primary, -np.inf)
    tied = valid & (v == np.max(v, axis=1, keepdims=True))
    return np.argmax(np.where(tied, keys, -1.0), axis=1)


def _top_prompts(primary: np.ndarray, eligible: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k eligible prompts with the largest ``primary`` (ties: random keys)."""
    order = np.lexsort((-keys, -np.where(eligible, primary, -np.inf)))
    return order[eligible[order]][:k]


def select_policy_pairs(
    method: str,
    rewards: np.ndarray,
    mask: np.ndarray | None,
    *,
    seed: int | np.random.Generator,
    identical: np.ndarray | None = None,
    fraction: float = 1.0,
    gradients: np.ndarray | None = None,
    v_inv: np.ndarray | None = None,
    lam: float = 1.0,
    entropy: np.ndarray | None = None,
) -> PolicySelection:
    """Pick at most one pair per prompt with a policy-driven rule (see :data:`POLICY_RULES`).

    ``rewards``: ``[B, N]`` implicit rewards; ``mask``: bool ``[B, N]`` real responses (None:
    all). ``identical``: optional bool ``[B, N, N]`` marking pairs with identical texts, never
    chosen (symmetrised here). ``fraction`` in (0, 1]: ``k = max(1, round(fraction * eligible))``
    prompts get a pair. ``gradients``: activedpo's ``[B, N, d]`` projected reward gradients;
    ``v_inv``: its ``[d, d]`` ``V^-1`` from earlier rounds (None: ``I / lam``). ``entropy``:
    optional ``[B]`` per-prompt entropy for apl (None: :func:`prompt_entropy` of ``rewards``).
    Ties are broken by seeded random keys, so a seed fixes the result.
    """
    if method not in POLICY_RULES:
        raise ValueError(f"unknown policy method {method!r}; known: {', '.join(POLICY_RULES)}")
    rng = _as_rng(seed)
    r = _check_matrix("rewards", rewards)
    b, n = r.shape
    real = _check_bool("mask", mask, (b, n))
    _check_finite_where("rewards", r, real)
    same = _check_bool("identical", identical, (b, n, n)) if identical is not None else None
    if isinstance(fraction, bool) or not (
        isinstance(fraction, (int, float, np.floating)) and 0.0 < fraction <= 1.0
    ):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a positive finite number, got {lam!r}")

    pairs = candidate_pairs(n)
    pi, pj = pairs[:, 0], pairs[:, 1]
    valid = real[:, pi] & real[:, pj]
    if same is not None:
        valid &= ~(same[:, pi, pj] | same[:, pj, pi])
    eligible = valid.any(axis=1)
    k = _n_keep(float(fraction), int(eligible.sum()))
    # Drawn up front, always in this order, so the same seed gives the same tie-breaks.
    pair_keys = rng.random((b, pairs.shape[0]))
    prompt_keys = rng.random(b)

    empty = PolicySelection(
        picks=np.full((b, 2), -1, dtype=np.int64),
        selected=np.zeros(b, dtype=bool),
        scores=np.full(b, np.nan),
    )
    ctx = _Candidates(pairs, valid, eligible, k, pair_keys, prompt_keys)

    if method == "activedpo":
        return _select_activedpo(ctx, empty, gradients, v_inv, lam, n)
    if k == 0:
        return empty

    safe_r = np.where(real, r, 0.0)
    abs_delta = np.abs(safe_r[:, pi] - safe_r[:, pj])
    if not (abs_delta[valid] > 0).any():
        return _random_picks(ctx, empty)

    if method in ("sharp", "wsharp"):
        best = _best_pair(-abs_delta, valid, pair_keys)
        best_delta = abs_delta[np.arange(b), best]
        rows = _top_prompts(-best_delta, eligible, prompt_keys, k)
        score_fn = sharpe_ratio if method == "sharp" else weighted_sharpe_ratio
    else:  # apl
        if entropy is None:
            h = prompt_entropy(r, real)
        else:
            h = np.asarray(entropy, dtype=np.float64)
            if h.shape != (b,):
                raise ValueError(f"entropy has shape {h.shape}, expected ({b},)")
            _check_finite_where("entropy", h, eligible)
        best = _best_pair(abs_delta, valid, pair_keys)
        rows = _top_prompts(h, eligible, prompt_keys, k)
        score_fn = np.abs

    out = empty
    out.picks[rows] = pairs[best[rows]]
    out.selected[rows] = True
    out.scores[rows] = score_fn(abs_delta[rows, best[rows]])
    return out


@dataclass(frozen=True)
class _Candidates:
    """What every rule shares: the pair table, which pairs are usable, k and the seeded keys."""

    pairs: np.ndarray  # [M, 2]
    valid: np.ndarray  # [B, M]
    eligible: np.ndarray  # [B]
    k: int
    pair_keys: np.ndarray  # [B, M] uniform tie-break keys
    prompt_keys: np.ndarray  # [B]


def _random_picks(
    ctx: _Candidates, out: PolicySelection, v_inv: np.ndarray | None = None
) -> PolicySelection:
    """Fallback when nothing distinguishes the pairs: k random eligible prompts, each with a
    uniformly random usable pair (scores stay nan: nothing was scored)."""
    best = _best_pair(np.zeros(ctx.valid.shape), ctx.valid, ctx.pair_keys)
    rows = _top_prompts(np.zeros(ctx.valid.shape[0]), ctx.eligible, ctx.prompt_keys, ctx.k)
    out.picks[rows] = ctx.pairs[best[rows]]
    out.selected[rows] = True
    out.fallback = "random"
    out.v_inv = v_inv
    return out


def _select_activedpo(
    ctx: _Candidates,
    out: PolicySelection,
    gradients: np.ndarray | None,
    v_inv: np.ndarray | None,
    lam: float,
    n: int,
) -> PolicySelection:
    """Greedy ``max sqrt(phi^T V^-1 phi)`` with Sherman-Morrison updates, one pair per prompt.

    The criterion of every candidate is kept up to date incrementally
    (``q -= (phi^T u)^2 / (1 + phi*^T u)``, ``u = V^-1 phi*``) through one product per remaining
    response, so a pick costs ``O(B_left N d + d^2)`` rather than re-evaluating all quadratic
    forms. ``lam`` only matters when ``v_inv`` is None.
    """
    b = ctx.valid.shape[0]
    if gradients is None:
        vi = None
        if v_inv is not None:
            vi = np.array(v_inv, dtype=np.float64)
            if vi.ndim != 2 or vi.shape[0] != vi.shape[1]:
                raise ValueError(f"v_inv must be a square [d, d] matrix, got shape {vi.shape}")
        if ctx.k == 0:
            out.v_inv = vi
            return out
        return _random_picks(ctx, out, vi)

    g = np.asarray(gradients, dtype=np.float64)
    if g.ndim != 3 or g.shape[:2] != (b, n):
        raise ValueError(f"gradients must be [B, N, d] = [{b}, {n}, d], got shape {g.shape}")
    d = g.shape[2]
    if v_inv is None:
        vi = np.eye(d) / lam
    else:
        vi = np.array(v_inv, dtype=np.float64)
        if vi.shape != (d, d):
            raise ValueError(f"v_inv has shape {vi.shape}, expected ({d}, {d}) to match gradients")
        if not np.isfinite(vi).all():
            raise ValueError("v_inv contains non-finite values")
        if not np.allclose(vi, vi.T, rtol=1e-8, atol=1e-12):
            raise ValueError("v_inv must be symmetric (it is the inverse of a Gram matrix)")
    if ctx.k == 0:
        out.v_inv = vi
        return out

    rows, cols = np.nonzero(ctx.valid)
    ii, jj = ctx.pairs[cols, 0], ctx.pairs[cols, 1]
    used = np.zeros((b, n), dtype=bool)
    used[rows, ii] = used[rows, jj] = True
    if not np.isfinite(g[used]).all():
        raise ValueError("gradients are not finite for some real response")
    g = np.where(used[..., None], g, 0.0)  # padded entries may hold anything

    # Norms and initial criterion per candidate, in chunks so phi never exists as [M, d].
    norm = np.empty(rows.size)
    q = np.empty(rows.size)
    gv = (g.reshape(b * n, d) @ vi).reshape(b, n, d)
    for lo in range(0, rows.size, _PAIR_CHUNK):
        r, a, c = rows[lo : lo + _PAIR_CHUNK], ii[lo : lo + _PAIR_CHUNK], jj[lo : lo + _PAIR_CHUNK]
        diff = g[r, a] - g[r, c]
        norm[lo : lo + _PAIR_CHUNK] = np.linalg.norm(diff, axis=1)
        q[lo : lo + _PAIR_CHUNK] = np.sum((gv[r, a] - gv[r, c]) * diff, axis=1)
    del gv
    if not (norm > 0).any():
        return _random_picks(ctx, out, vi)
    inv_norm = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    q *= inv_norm**2

    # Sherman-Morrison, accumulated as V^-1 = V0^-1 - W^T W with w_t = u_t / sqrt(1 + phi_t.u_t):
    # each pick then costs O(d^2 + t d) instead of rewriting a d x d matrix.
    w = np.empty((ctx.k, d))
    keys = ctx.pair_keys[rows, cols]
    # Per-candidate state, compacted as prompts get their pick; fi/fj index the responses of
    # the prompts still in play (`live`), whose gradients `gs` are compacted less often.
    live = np.unique(rows)
    slot = np.full(b, -1)
    slot[live] = np.arange(live.size)
    gs = g[live].reshape(-1, d)
    cand = np.arange(rows.size)
    fi, fj = slot[rows] * n + ii, slot[rows] * n + jj
    t = 0
    for t in range(ctx.k):
        qc = q[cand]
        top = float(qc.max())
        tied = qc >= top - ACTIVEDPO_TIE_RTOL * max(abs(top), 1e-300)
        pos = int(np.argmax(np.where(tied, keys[cand], -1.0)))
        c = int(cand[pos])
        row = int(rows[c])
        out.picks[row] = ctx.pairs[cols[c]]
        out.selected[row] = True
        out.scores[row] = math.sqrt(max(float(q[c]), 0.0))
        phi = (g[row, ii[c]] - g[row, jj[c]]) * inv_norm[c]
        u = vi @ phi - w[:t].T @ (w[:t] @ phi)
        denom = 1.0 + float(phi @ u)
        w[t] = u / math.sqrt(denom)
        keep = rows[cand] != row
        cand, fi, fj = cand[keep], fi[keep], fj[keep]
        if cand.size == 0:
            break
        slot[row] = -1
        if 2 * int((slot >= 0).sum()) <= live.size:  # drop picked prompts' gradients
            live = live[slot[live] >= 0]
            slot[live] = np.arange(live.size)
            gs = g[live].reshape(-1, d)
            fi, fj = slot[rows[cand]] * n + ii[cand], slot[rows[cand]] * n + jj[cand]
        # phi_m . u = (g_i . u - g_j . u) / |g_i - g_j|: one product per response, not per pair.
        su = gs @ u
        pu = (su[fi] - su[fj]) * inv_norm[cand]
        q[cand] -= pu**2 / denom
    w = w[: t + 1]
    vi = vi - w.T @ w
    out.v_inv = 0.5 * (vi + vi.T)  # drop rounding asymmetry before the caller persists it
    return out


# ---------------------------------------------------------------------------------------------
# Random projection


class CountSketch:
    """Seeded CountSketch ``R^P -> R^d``: coordinate ``p`` goes to bucket ``h(p)`` with sign
    ``s(p)``.

    ``h`` and ``s`` are drawn from ``np.random.default_rng(seed)`` (buckets as int32 first, then
    signs as int8), so the same ``(n_params, dim, seed)`` gives the same sketch in any process;
    memory is O(P), never a dense ``P x d`` matrix. It preserves squared norms in expectation
    (no scaling needed). ``fingerprint`` hashes the buckets and signs so runs can record which
    projection produced their vectors.
    """

    def __init__(self, n_params: int, dim: int, seed: int) -> None:
        for name, val in (("n_params", n_params), ("dim", dim)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if dim > np.iinfo(np.int32).max:
            raise ValueError(f"dim must fit in int32, got {dim}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.n_params = int(n_params)
        self.dim = int(dim)
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        self.indices = rng.integers(0, self.dim, size=self.n_params, dtype=np.int32)
        self.signs = (1 - 2 * rng.integers(0, 2, size=self.n_params, dtype=np.int8)).astype(np.int8)
        self.indices.flags.writeable = False
        self.signs.flags.writeable = False
        h = hashlib.sha256()
        h.update(b"countsketch-v1")
        h.update(np.array([self.n_params, self.dim], dtype="<i8").tobytes())
        h.update(self.indices.astype("<i4").tobytes())
        h.update(self.signs.tobytes())
        self.fingerprint = h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"CountSketch(n_params={self.n_params}, dim={self.dim}, seed={self.seed}, "
            f"fingerprint={self.fingerprint!r})"
        )

    def project(self, vec: Any) -> np.ndarray:
        """``[P] -> [dim]`` or ``[k, P] -> [k, dim]`` as float32 (accumulated in float64).

        Accepts numpy arrays or anything array-like; torch tensors are detached and moved to the
        CPU by duck typing, so torch is not imported here.
        """
        if hasattr(vec, "detach"):  # a torch tensor (bf16 has no numpy dtype: go via float)
            vec = vec.detach().float().cpu().numpy()
        x = np.asarray(vec, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[-1] != self.n_params:
            raise ValueError(
                f"expected a [{self.n_params}] or [k, {self.n_params}] array, got shape {x.shape}"
            )
        rows = x.reshape(-1, self.n_params)
        out = np.empty((rows.shape[0], self.dim), dtype=np.float32)
        for t, row in enumerate(rows):
            out[t] = np.bincount(self.indices, weights=row * self.signs, minlength=self.dim)
        return out[0] if x.ndim == 1 else out
