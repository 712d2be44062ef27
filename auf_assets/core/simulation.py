"""Simulated-oracle runs: replay the active loop on a pool of pre-scored responses.

A *pool* has one row per response: ``prompt_id``, ``prompt``, ``completion_id``, ``model``,
``response`` and ``oracle_score`` (optional ``source``); the oracle score plays the judge. A run
(:func:`simulate`) is the pipeline's round logic without the generation and judging cost:

1. **Split** (by seed): a fraction of the prompts is held out for evaluation and never selected
   from; the other (train) prompts are visited in a seeded random order, ``batch_size`` per round.
2. **Score**: the running :class:`~auf_assets.core.ensemble.RewardEnsemble` predicts ``mu, sigma``
   of every response of the round's prompts (fresh heads in round 1, as in the pipeline).
3. **Select**: the method of the registry (:mod:`auf_assets.core.methods`) picks one pair per
   prompt, vectorised over the round (ragged prompts are masked), after the warm-up rule
   (:mod:`auf_assets.core.round_step`, the round logic the pipeline's assets share). Policy-aware
   methods select with a DPO policy; static oracle baselines are selectable too.
4. **Judge**: only the two selected responses' oracle scores are revealed (an :class:`Oracle`
   counts every lookup). ``chosen`` = the higher score. **Ties**: when the two scores are exactly
   equal the first-selected response is recorded as ``chosen``, the row is flagged ``tie``, its
   labels are charged, and the pair is never used for training (it carries no preference).
5. **Update**: non-tied pairs enter the FIFO :class:`~auf_assets.core.round_step.ReplayBuffer`
   and the running model trains on it (:func:`~auf_assets.core.round_step.train_on_replay`,
   optimiser state carried across rounds), as the pipeline's ``reward_model`` asset does.

**Labels**: an acquisition method is charged 2 labels per prompt. A static baseline reads the
oracle scores of the round's responses (it is an oracle baseline by definition) and is charged its
documented ``labels_used``: ``random_pair`` 2, ``ultrafeedback_oracle`` min(4, n), ``maxmin`` n,
``delta_model`` 0.

**Evaluation** (every ``eval_every`` rounds and after the last round): a *fresh* evaluation
ensemble (:class:`EvalModelConfig`: same class, fixed recipe) is trained on **all** non-tied pairs
selected so far, and scored on the held-out prompts: over every pair of their responses whose
oracle scores differ by at least ``gap_threshold``, the fraction ordered correctly by
``sign(mu_i - mu_j)`` (an exact ``mu`` tie counts 1/2). A fresh model with a fixed recipe makes the
number a property of the *selected data* alone: it does not depend on how long the online model
happened to train, and baselines (which need no online model) are measured the same way. The
running model's held-out accuracy is reported beside it (``running_accuracy``). Each point also has
the mean oracle gap ``chosen_score - rejected_score`` and the mean chosen score of all selected
pairs so far, the labels spent and the loop's wall time.

Seeds: the K-of-N response sample, the held-out split and the prompt order depend only on the
run's seed (not the method), so methods run with the same seed see the same prompts in the same
order: comparisons are paired.

**Split protocol** (checking settings without overfitting one pool): :func:`protocol_split`
halves a pool by prompts, by the models that wrote the responses, or both (tune on half the
prompts x half the models, confirm on the other halves), seeded by ``(seed, index)``;
:func:`pool_half` is one half as a pool of its own (rows keep their ``feature_row``, so the full
pool's features serve it), and a run on it holds out its own evaluation prompts as above.
``auf bench --split`` and ``benchmarks/bench_defaults.py`` build on it. No Dagster import here.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .ensemble import EnsembleConfig, RewardEnsemble
from .methods import get_method, method_names
from .policy_selection import identical_pairs
from .round_step import ReplayBuffer, select_with_model, select_with_policy, train_on_replay
from .settings import RoundSettings, refuse_renamed

__all__ = [
    "POOL_COLUMNS",
    "PAIR_COLUMNS",
    "SPLIT_HALVES",
    "SPLIT_KINDS",
    "EvalModelConfig",
    "Oracle",
    "PoolError",
    "PoolSplit",
    "SimPool",
    "SimulationConfig",
    "SimulationResult",
    "heldout_pairs",
    "load_pool",
    "pairwise_accuracy",
    "pool_half",
    "protocol_split",
    "protocol_splits",
    "sample_responses",
    "simulate",
    "split_prompts",
    "validate_pool",
]

#: Columns a pool file must have (``source`` is optional).
POOL_COLUMNS = ("prompt_id", "prompt", "completion_id", "model", "response", "oracle_score")
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

# The default preset (what a run gets when nothing else is said).
_DEFAULT_ROUND = RoundSettings()
# Independent random streams derived from the run's seed.
_STREAM_SAMPLE, _STREAM_SPLIT, _STREAM_SELECT, _STREAM_PROTOCOL = 11, 12, 13, 14
_EVAL_SEED_OFFSET = 1_000_003


class PoolError(ValueError):
    """A pool file or frame that cannot be simulated; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------
# the pool


@dataclass
class SimPool:
    """A validated pool.

    ``frame`` holds the rows sorted by (prompt_id, completion_id) with an extra ``feature_row``
    column: the row's index in the full validated pool, i.e. in the feature matrix computed for it
    (:func:`sample_responses` keeps it, so a sub-sampled pool still indexes the same features).
    ``index`` is ``[P, N]``: row numbers of ``frame`` per prompt, ``-1`` as padding.
    """

    frame: pl.DataFrame
    index: np.ndarray
    prompt_ids: list[str]
    name: str = "<frame>"
    dropped_prompts: list[str] = field(default_factory=list)

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_responses(self) -> int:
        return self.frame.height

    @property
    def mask(self) -> np.ndarray:
        return self.index >= 0

    @property
    def scores(self) -> np.ndarray:
        return self.frame["oracle_score"].to_numpy().astype(np.float64)

    @property
    def feature_rows(self) -> np.ndarray:
        return self.frame["feature_row"].to_numpy().astype(np.int64)

    def content_hash(self) -> str:
        """sha256 of the (prompt_id, completion_id, prompt, response) rows in order.

        Features depend on exactly these, so this (with the encoder's key) keys the feature cache.
        Oracle scores, models and sources are not part of it.
        """
        h = hashlib.sha256()
        cols = [
            self.frame[c].to_list() for c in ("prompt_id", "completion_id", "prompt", "response")
        ]
        for row in zip(*cols, strict=True):
            for value in row:
                h.update(value.encode("utf-8"))
                h.update(b"\x1f")
            h.update(b"\x1e")
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts and the oracle-score distribution (for logs and metadata)."""
        counts = self.mask.sum(axis=1)
        s = self.scores
        q = np.quantile(s, [0.1, 0.25, 0.5, 0.75, 0.9]) if s.size else [math.nan] * 5
        return {
            "pool": self.name,
            "prompts": self.n_prompts,
            "responses": self.n_responses,
            "models": int(self.frame["model"].n_unique()),
            "responses_per_prompt": {
                "min": int(counts.min()) if counts.size else 0,
                "median": float(np.median(counts)) if counts.size else 0.0,
                "max": int(counts.max()) if counts.size else 0,
            },
            "oracle_score": {
                "min": float(s.min()) if s.size else math.nan,
                "p10": float(q[0]),
                "p25": float(q[1]),
                "median": float(q[2]),
                "p75": float(q[3]),
                "p90": float(q[4]),
                "max": float(s.max()) if s.size else math.nan,
                "mean": float(s.mean()) if s.size else math.nan,
            },
            "dropped_prompts": len(self.dropped_prompts),
        }


def _read_table(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    readers = {
        ".parquet": pl.read_parquet,
        ".pq": pl.read_parquet,
        ".csv": pl.read_csv,
        ".jsonl": pl.read_ndjson,
        ".ndjson": pl.read_ndjson,
        ".json": pl.read_json,
    }
    if suffix not in readers:
        raise PoolError(f"{path}: unsupported pool format {suffix!r} (use parquet, csv or jsonl)")
    try:
        return readers[suffix](path)
    except Exception as exc:  # the reader's own message, prefixed with the file
        raise PoolError(f"{path}: cannot read the pool: {exc}") from exc


def load_pool(path: str | Path) -> SimPool:
    """Read and validate a pool file (parquet, csv or jsonl); see :func:`validate_pool`."""
    p = Path(path)
    if not p.is_file():
        raise PoolError(f"{p}: pool file not found")
    return validate_pool(_read_table(p), name=str(p))


def _examples(values: Sequence[Any], k: int = 3) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:k])
    return shown + (f" (and {len(values) - k} more)" if len(values) > k else "")


def validate_pool(frame: pl.DataFrame, name: str = "<frame>") -> SimPool:
    """Check a pool frame and build a :class:`SimPool`.

    Errors (:class:`PoolError`, naming ``name``): missing columns; null ids or texts; an
    ``oracle_score`` that is not numeric, or null / NaN / infinite; duplicate ``completion_id``;
    a ``prompt_id`` with more than one prompt text; no prompt left with two responses.
    Prompts with fewer than 2 responses are dropped and listed in ``dropped_prompts``.
    """
    missing = [c for c in POOL_COLUMNS if c not in frame.columns]
    if missing:
        raise PoolError(
            f"{name}: missing column(s) {missing}; a pool needs {list(POOL_COLUMNS)} "
            f"(optional: source); found {frame.columns}"
        )
    df = frame.select(*POOL_COLUMNS, *(["source"] if "source" in frame.columns else []))
    if "source" not in df.columns:
        df = df.with_columns(source=pl.lit("", dtype=pl.String))
    for col in ("prompt_id", "completion_id", "model", "prompt", "response", "source"):
        nulls = int(df[col].null_count())
        if nulls and col != "source":
            raise PoolError(f"{name}: column {col!r} has {nulls} null value(s)")
        df = df.with_columns(pl.col(col).cast(pl.String).fill_null(""))

    score = df["oracle_score"]
    if score.dtype == pl.String:
        cast = score.cast(pl.Float64, strict=False)
        bad = df.filter(cast.is_null() & score.is_not_null())
        if bad.height:
            raise PoolError(
                f"{name}: oracle_score must be numeric; {bad.height} value(s) are not, e.g. "
                f"{_examples(bad['oracle_score'].to_list())} (completion "
                f"{_examples(bad['completion_id'].to_list())})"
            )
        score = cast
    elif not score.dtype.is_numeric():
        raise PoolError(f"{name}: oracle_score must be numeric, got column type {score.dtype}")
    df = df.with_columns(oracle_score=score.cast(pl.Float64))
    bad = df.filter(
        pl.col("oracle_score").is_null()
        | pl.col("oracle_score").is_nan()
        | pl.col("oracle_score").is_infinite()
    )
    if bad.height:
        raise PoolError(
            f"{name}: oracle_score is missing, NaN or infinite in {bad.height} row(s), e.g. "
            f"completion {_examples(bad['completion_id'].to_list())}"
        )
    dup = df.group_by("completion_id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise PoolError(
            f"{name}: {dup.height} duplicate completion_id value(s), e.g. "
            f"{_examples(sorted(dup['completion_id'].to_list()))}"
        )
    texts = df.group_by("prompt_id").agg(pl.col("prompt").n_unique().alias("n"))
    texts = texts.filter(pl.col("n") > 1)
    if texts.height:
        raise PoolError(
            f"{name}: {texts.height} prompt_id value(s) carry more than one prompt text, e.g. "
            f"{_examples(sorted(texts['prompt_id'].to_list()))}"
        )

    counts = df.group_by("prompt_id").len()
    small = sorted(counts.filter(pl.col("len") < 2)["prompt_id"].to_list())
    if small:
        df = df.filter(~pl.col("prompt_id").is_in(small))
    if df.height == 0:
        raise PoolError(f"{name}: no prompt has at least 2 responses")
    return _build_pool(df.sort("prompt_id", "completion_id"), name, small, fresh_rows=True)


def _build_pool(df: pl.DataFrame, name: str, dropped: list[str], *, fresh_rows: bool) -> SimPool:
    """``df`` sorted by (prompt_id, completion_id); ``fresh_rows`` numbers the feature rows."""
    if fresh_rows:
        df = df.with_columns(feature_row=pl.int_range(0, df.height, dtype=pl.Int64))
    groups = df.group_by("prompt_id", maintain_order=True).len()
    lengths = groups["len"].to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    width = int(lengths.max())
    cols = np.arange(width)[None, :]
    index = np.where(cols < lengths[:, None], starts[:, None] + cols, -1).astype(np.int64)
    return SimPool(df, index, groups["prompt_id"].to_list(), name, list(dropped))


def sample_responses(pool: SimPool, k: int | None, seed: int) -> SimPool:
    """Keep ``k`` responses per prompt, drawn uniformly by ``seed`` (all of a prompt's responses
    when it has ``k`` or fewer; ``None`` or 0 keeps everything). ``k`` must be at least 2."""
    if k is None or k == 0:
        return pool
    if k < 2:
        raise ValueError(f"responses per prompt must be at least 2 (or 0 for all), got {k}")
    counts = pool.mask.sum(axis=1)
    if int(counts.max()) <= k:
        return pool
    rng = np.random.default_rng([int(seed), _STREAM_SAMPLE])
    keys = np.where(pool.mask, rng.random(pool.index.shape), 2.0)
    keep_cols = np.argsort(keys, axis=1, kind="stable")[:, :k]
    keep = np.take_along_axis(pool.index, keep_cols, axis=1)
    rows = np.sort(keep[keep >= 0])
    df = pool.frame[rows]
    return _build_pool(df, pool.name, pool.dropped_prompts, fresh_rows=False)


def split_prompts(
    n_prompts: int, heldout_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, heldout)`` prompt row indices: train in a seeded random visiting order, held-out
    sorted. ``round(fraction * n)`` prompts are held out, at least 1 when the fraction is > 0 and
    at least 1 prompt always stays for training."""
    if not (0.0 <= heldout_fraction < 1.0):
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if n_prompts < 1:
        raise ValueError("the pool has no prompts")
    n_held = int(round(heldout_fraction * n_prompts))
    if heldout_fraction > 0:
        n_held = max(n_held, 1)
    n_held = min(n_held, n_prompts - 1)
    rng = np.random.default_rng([int(seed), _STREAM_SPLIT])
    order = rng.permutation(n_prompts)
    return order[n_held:].astype(np.int64), np.sort(order[:n_held]).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# the split protocol: tune on one half of a pool, confirm on the other

#: What a protocol split divides: the prompts, the models (the responses by the model that wrote
#: them) or both at once.
SPLIT_KINDS = ("prompts", "models", "both")
#: The two halves of a split: settings are chosen on ``tune`` and confirmed on ``confirm``.
SPLIT_HALVES = ("tune", "confirm")


@dataclass(frozen=True)
class PoolSplit:
    """One split of a pool into a *tuning* half and a *confirmation* half.

    ``kind`` ``prompts``: the halves are disjoint prompt sets (every model in both);
    ``models``: the halves are disjoint model sets (every prompt in both, each keeping only the
    responses of its half's models); ``both``: tune = half the prompts x half the models, confirm
    = the other prompts x the other models. Every simulated run inside a half still holds out its
    own evaluation prompts (``heldout_fraction``), from that half's prompts only.

    ``seed`` and ``index`` determine it: split ``k`` of seed ``s`` is the same on every machine,
    and different ``k`` give different splits. Built by :func:`protocol_split`; the sub-pools by
    :func:`pool_half`.
    """

    kind: str
    seed: int
    index: int
    tune_prompts: tuple[str, ...]
    confirm_prompts: tuple[str, ...]
    tune_models: tuple[str, ...]
    confirm_models: tuple[str, ...]

    def prompts(self, half: str) -> tuple[str, ...]:
        _check_half(half)
        return self.tune_prompts if half == "tune" else self.confirm_prompts

    def models(self, half: str) -> tuple[str, ...]:
        _check_half(half)
        return self.tune_models if half == "tune" else self.confirm_models

    @property
    def label(self) -> str:
        return f"{self.kind} split {self.index} (seed {self.seed})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "index": self.index,
            "tune_prompts": list(self.tune_prompts),
            "confirm_prompts": list(self.confirm_prompts),
            "tune_models": list(self.tune_models),
            "confirm_models": list(self.confirm_models),
        }


def _check_half(half: str) -> None:
    if half not in SPLIT_HALVES:
        raise ValueError(f"half must be one of {', '.join(SPLIT_HALVES)}; got {half!r}")


def _check_kind(kind: str) -> None:
    if kind not in SPLIT_KINDS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_KINDS)}; got {kind!r}")


def _halve(items: list[str], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    order = rng.permutation(len(items))
    first = (len(items) + 1) // 2
    return sorted(items[i] for i in order[:first]), sorted(items[i] for i in order[first:])


def _halve_models_stratified(
    models: list[str], strength: dict[str, float], rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """Sort the models by strength, cut the ranking into consecutive pairs and send one of each
    pair to each half (a coin per pair; an odd last model goes to a random half): both halves get
    a similar spread of strong and weak models."""
    ranked = sorted(models, key=lambda m: (-strength[m], m))
    a: list[str] = []
    b: list[str] = []
    coins = rng.random(len(ranked) // 2 + 1)
    for k in range(0, len(ranked) - 1, 2):
        first, second = ranked[k], ranked[k + 1]
        if coins[k // 2] < 0.5:
            first, second = second, first
        a.append(first)
        b.append(second)
    if len(ranked) % 2:  # a coin too: neither half is systematically the larger one
        (a if coins[-1] < 0.5 else b).append(ranked[-1])
    return sorted(a), sorted(b)


def protocol_split(
    pool: SimPool, kind: str, *, seed: int = 0, index: int = 0, stratify_models: bool = True
) -> PoolSplit:
    """Split ``pool`` into a tuning and a confirmation half (see :class:`PoolSplit`).

    Prompts are halved uniformly at random (the tuning half gets the odd one). Models are halved
    *stratified by strength* by default: ranked by their mean oracle score over the pool and cut
    into consecutive pairs, one of each pair per half, so that a handful of strong models (the dev
    pool has three far above the rest) is not all in one half. The oracle is used only to balance
    the two halves, never by a method. ``stratify_models=False`` halves them uniformly.

    Random streams: ``(seed, index)`` only; the prompt and the model halves are independent draws.
    Raises ``ValueError`` when a half would have fewer than 2 models (kinds ``models``/``both``)
    or no prompt (kinds ``prompts``/``both``).
    """
    _check_kind(kind)
    if index < 0:
        raise ValueError(f"split index must be >= 0, got {index}")
    prompts = sorted(pool.prompt_ids)
    models = sorted(set(pool.frame["model"].to_list()))
    if kind in ("prompts", "both"):
        if len(prompts) < 2:
            raise ValueError(f"{pool.name}: a prompt split needs at least 2 prompts")
        rng = np.random.default_rng([int(seed), _STREAM_PROTOCOL, int(index), 0])
        tune_p, conf_p = _halve(prompts, rng)
    else:
        tune_p, conf_p = prompts, prompts
    if kind in ("models", "both"):
        if len(models) < 4:
            raise ValueError(
                f"{pool.name}: a model split needs at least 4 models (2 per half), found "
                f"{len(models)}"
            )
        rng = np.random.default_rng([int(seed), _STREAM_PROTOCOL, int(index), 1])
        if stratify_models:
            means = pool.frame.group_by("model").agg(pl.col("oracle_score").mean())
            strength = dict(
                zip(means["model"].to_list(), means["oracle_score"].to_list(), strict=True)
            )
            tune_m, conf_m = _halve_models_stratified(models, strength, rng)
        else:
            tune_m, conf_m = _halve(models, rng)
    else:
        tune_m, conf_m = models, models
    return PoolSplit(
        kind, int(seed), int(index), tuple(tune_p), tuple(conf_p), tuple(tune_m), tuple(conf_m)
    )


def protocol_splits(
    pool: SimPool, kind: str, n_splits: int, *, seed: int = 0, stratify_models: bool = True
) -> list[PoolSplit]:
    """Splits ``0 .. n_splits - 1`` of ``seed`` (:func:`protocol_split`)."""
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    return [
        protocol_split(pool, kind, seed=seed, index=k, stratify_models=stratify_models)
        for k in range(n_splits)
    ]


def pool_half(pool: SimPool, split: PoolSplit, half: str) -> SimPool:
    """The sub-pool of one half of ``split``: its prompts, each with only its models' responses.

    Prompts left with fewer than 2 responses are dropped (listed in ``dropped_prompts``). The rows
    keep their ``feature_row``, so the full pool's feature matrix serves every half.
    """
    prompts = split.prompts(half)
    models = split.models(half)
    df = pool.frame.filter(
        pl.col("prompt_id").is_in(list(prompts)) & pl.col("model").is_in(list(models))
    )
    counts = df.group_by("prompt_id").len()
    small = sorted(counts.filter(pl.col("len") < 2)["prompt_id"].to_list())
    if small:
        df = df.filter(~pl.col("prompt_id").is_in(small))
    if df.height == 0:
        raise PoolError(f"{pool.name}: the {half} half of {split.label} has no prompt left")
    name = f"{pool.name}[{split.kind} split {split.index} seed {split.seed} {half}]"
    return _build_pool(
        df.sort("prompt_id", "completion_id"),
        name,
        [*pool.dropped_prompts, *small],
        fresh_rows=False,
    )


# --------------------------------------------------------------------------------------------------
# the oracle


class Oracle:
    """The simulated judge: oracle scores looked up by pool row, with every lookup recorded.

    ``reveal`` is the judge (used for selected pairs and baselines' reads); ``evaluation_scores``
    is the ground truth of held-out prompts for measuring accuracy, recorded separately.
    """

    def __init__(self, scores: np.ndarray):
        self._scores = np.asarray(scores, dtype=np.float64)
        self.revealed: list[np.ndarray] = []
        self.evaluated: list[np.ndarray] = []

    @property
    def n_revealed(self) -> int:
        return int(sum(len(r) for r in self.revealed))

    def revealed_rows(self) -> np.ndarray:
        return np.concatenate(self.revealed) if self.revealed else np.empty(0, dtype=np.int64)

    def evaluated_rows(self) -> np.ndarray:
        return np.concatenate(self.evaluated) if self.evaluated else np.empty(0, dtype=np.int64)

    def reveal(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        self.revealed.append(rows.copy())
        return self._scores[rows]

    def evaluation_scores(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        self.evaluated.append(rows.copy())
        return self._scores[rows]


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass
class EvalModelConfig:
    """The fixed recipe of the evaluation reward model (a fresh :class:`RewardEnsemble`).

    It trains ``epochs`` passes over all non-tied selected pairs (shuffled each pass, batches of
    ``batch_size``), AdamW at ``lr``, anchor ``anchor_lambda0`` without decay. Only the mean over
    heads is used (accuracy), so fewer heads than the running model suffice. The defaults are the
    recipe under which *random* selection scored best on the dev pool among nine tried
    (docs/benchmarks.md): a conservative evaluator for comparisons against random.
    """

    n_heads: int = 8
    hidden: tuple[int, ...] = (128, 128)
    lr: float = 3e-4
    epochs: int = 10
    batch_size: int = 32
    anchor_lambda0: float = 1.0
    center_coef: float = 0.01
    weight_decay: float = 0.0

    def ensemble_config(self, seed: int, n_pairs: int) -> EnsembleConfig:
        return EnsembleConfig(
            n_heads=self.n_heads,
            hidden=tuple(self.hidden),
            lr=self.lr,
            weight_decay=self.weight_decay,
            anchor_lambda0=self.anchor_lambda0,
            anchor_half_life=math.inf,
            center_coef=self.center_coef,
            batch_size=self.batch_size,
            max_steps=max(1, -(-max(n_pairs, 1) // self.batch_size)),
            seed=seed,
            stats_pairs=0,
        )


@dataclass
class SimulationConfig:
    """Settings of one simulated run.

    Attributes:
        method: a registered selection method (:mod:`auf_assets.core.methods`): a reward-model
            rule, a policy-aware rule (needs a policy loop) or a static oracle baseline.
        seed: drives the response sample, the split, the prompt order, the selection and the
            ensembles' initialisation.
        responses_per_prompt: K responses per prompt sampled by seed; ``None``/0 = all.
        batch_size: prompts per round (B).
        heldout_fraction: fraction of prompts held out for evaluation (never selected from).
        acquisition_width: the width of the bounds ``mu -/+ acquisition_width * sigma``.
        method_options: extra options of the rule (deltaquantile: ``q``, ``eps``).
        eval_every: evaluate after every this many rounds (and always after the last).
        gap_threshold: held-out pairs count for accuracy when ``|score_i - score_j| >=`` this.
        warmup_rounds: the first rounds select at random (the running model still trains).
        train_passes: ``train_round`` calls per round on the replay buffer (the reference: 1).
        max_rounds: stop early after this many rounds (``None``: until the train prompts run out).
        ensemble: the running model's :class:`EnsembleConfig` (its ``seed`` is replaced by the
            run's seed).
        eval_model: the evaluation model's recipe.
        strong_model, weak_model: ``delta_model`` only: the model names whose responses form the
            (chosen, rejected) pair.
    """

    method: str = _DEFAULT_ROUND.method
    seed: int = 0
    responses_per_prompt: int | None = None
    batch_size: int = 32
    heldout_fraction: float = 0.25
    acquisition_width: float = _DEFAULT_ROUND.acquisition_width
    method_options: dict[str, float] = field(default_factory=dict)
    eval_every: int = 1
    gap_threshold: float = 0.1
    warmup_rounds: int = _DEFAULT_ROUND.warmup_rounds
    train_passes: int = _DEFAULT_ROUND.train_passes
    max_rounds: int | None = None
    ensemble: EnsembleConfig = field(
        default_factory=lambda: EnsembleConfig.from_dict(_DEFAULT_ROUND.ensemble.learning())
    )
    eval_model: EvalModelConfig = field(default_factory=EvalModelConfig)
    strong_model: str | None = None
    weak_model: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ensemble, dict):
            # A partial dict overrides the default preset's ensemble, as a preset's flags do.
            self.ensemble = EnsembleConfig.from_dict(
                {**_DEFAULT_ROUND.ensemble.learning(), **self.ensemble}
            )
        if isinstance(self.eval_model, dict):
            data = dict(self.eval_model)
            if "hidden" in data:
                data["hidden"] = tuple(data["hidden"])
            self.eval_model = EvalModelConfig(**data)
        selection = get_method(self.method)  # a ValueError lists the known methods
        # The round's own settings (method, width, warm-up, passes) check themselves.
        RoundSettings(
            method=self.method,
            acquisition_width=self.acquisition_width,
            warmup_rounds=self.warmup_rounds,
            train_passes=self.train_passes,
            ensemble=self.ensemble,
        )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.max_rounds is not None and self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1 or None, got {self.max_rounds}")
        if not (self.gap_threshold >= 0 and math.isfinite(self.gap_threshold)):
            raise ValueError(f"gap_threshold must be finite and >= 0, got {self.gap_threshold}")
        if self.responses_per_prompt is not None and self.responses_per_prompt == 0:
            self.responses_per_prompt = None
        if self.responses_per_prompt is not None and self.responses_per_prompt < 2:
            raise ValueError(
                f"responses_per_prompt must be >= 2 (or 0/None for all), got "
                f"{self.responses_per_prompt}"
            )
        if not (0.0 <= self.heldout_fraction < 1.0):
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if "fraction" in self.method_options and selection.family != "policy":
            raise ValueError(
                f"fraction applies to the policy-aware methods "
                f"({', '.join(method_names('policy'))}), not to {self.method}"
            )
        if "model_names" in selection.needs and not (self.strong_model and self.weak_model):
            raise ValueError(f"{self.method} needs strong_model and weak_model (model names)")

    @property
    def is_active(self) -> bool:
        """True for reward-model methods (a running reward model picks the pairs)."""
        return get_method(self.method).family == "reward_model"

    @property
    def is_policy_aware(self) -> bool:
        """True for rules that select with the DPO policy itself (they need a policy loop)."""
        return get_method(self.method).family == "policy"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["ensemble"] = self.ensemble.to_dict()
        out["eval_model"] = asdict(self.eval_model)
        out["eval_model"]["hidden"] = list(self.eval_model.hidden)
        out["method_options"] = dict(self.method_options)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationConfig:
        known = {f.name for f in fields(cls)}
        refuse_renamed("simulation", data)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SimulationConfig keys: {unknown}")
        return cls(**data)


# --------------------------------------------------------------------------------------------------
# evaluation helpers


def heldout_pairs(
    pool: SimPool, prompts: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All response pairs (i < j) of the given prompts with ``|s_i - s_j| >= threshold``.

    ``scores`` are the oracle scores by pool row. Returns pool rows ``(ri, rj)`` and the sign
    (+1/-1) of ``s_i - s_j``. Exactly equal scores never count (even with threshold 0).
    """
    idx = pool.index[np.asarray(prompts, dtype=np.int64)]
    if idx.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0)
    n = idx.shape[1]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)[None]
    valid = (idx[:, :, None] >= 0) & (idx[:, None, :] >= 0) & upper
    s = np.where(idx >= 0, scores[np.maximum(idx, 0)], 0.0)
    diff = s[:, :, None] - s[:, None, :]
    keep = valid & (np.abs(diff) >= threshold) & (diff != 0)
    p, i, j = np.nonzero(keep)
    return idx[p, i], idx[p, j], np.sign(diff[p, i, j])


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def pairwise_accuracy(mu: np.ndarray, ri: np.ndarray, rj: np.ndarray, sign: np.ndarray) -> float:
    """Fraction of pairs with ``sign(mu_i - mu_j) == sign``; exact ``mu`` ties count 1/2 (NaN
    when there are no pairs)."""
    if len(ri) == 0:
        return math.nan
    d = mu[ri] - mu[rj]
    correct = (d * sign > 0).astype(np.float64) + 0.5 * (d == 0)
    return float(correct.mean())


def _train_eval_model(
    features: np.ndarray,
    chosen: np.ndarray,
    rejected: np.ndarray,
    config: EvalModelConfig,
    seed: int,
    n_done: int,
) -> RewardEnsemble:
    model = RewardEnsemble(features.shape[1], config.ensemble_config(seed, len(chosen)))
    if len(chosen):
        xc = np.ascontiguousarray(features[chosen], dtype=np.float32)
        xr = np.ascontiguousarray(features[rejected], dtype=np.float32)
        for _ in range(config.epochs):
            model.train_round(xc, xr, n_done)
    return model


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


def _judge(oracle: Oracle, a: np.ndarray, b: np.ndarray):
    """Reveal the pair's two scores: (chosen, rejected, their scores, tie flags)."""
    revealed = oracle.reveal(np.concatenate([a, b]))
    sa, sb = revealed[: len(a)], revealed[len(a) :]
    first = sa >= sb  # exact tie: the first-selected response is recorded as chosen
    c, r = np.where(first, a, b), np.where(first, b, a)
    s_c, s_r = np.where(first, sa, sb), np.where(first, sb, sa)
    return c, r, s_c, s_r, sa == sb


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
