"""The settings of a round and of training: one object per concern, each checking itself.

* :class:`EnsembleSettings`: the running reward model's hyper-parameters that shape learning
  (the fields of :class:`~auf_assets.core.ensemble.EnsembleConfig` a preset sets). Its defaults
  are the paper's reference values (spec section 2).
* :class:`RoundSettings`: what a round needs beyond the ensemble: the selection ``method``, the
  ``acquisition_width`` (bounds are ``mu -/+ width * sigma``), ``warmup_rounds`` (the first
  rounds pick at random), ``train_passes`` over the replay buffer per round, and the feature
  ``encoder`` as one spec string (``text-stats``, ``minilm+text-stats``, ...; parsed only by
  :func:`auf_assets.core.features.parse_encoder`). Its defaults are the ``default`` preset, so
  ``RoundSettings()`` is what a run gets when nothing else is said.
* :class:`TrainingSettings`: one downstream training run (DPO/IPO/SimPO policy or reward model):
  the loss, ``dpo_beta``, LoRA, learning rate, steps. Its defaults are the CPU policy preset.

The named presets (:mod:`auf_assets.core.presets`) are instances of these classes. Every
consumer (``SimulationConfig``, the pipeline's resources and run configs, ``auf simulate/bench/
demo/train``) reads its defaults from them; the precedence is run config > environment >
preset (README "Settings").

Each object checks its values when it is built and raises :class:`SettingsError` naming the
field, the value and the allowed range, so every entry point can refuse a bad value before any
model loads. No Dagster, torch or polars import here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from .features import parse_encoder
from .methods import ROUND_FAMILIES, get_method, method_names

__all__ = [
    "DEFAULT_ROUND_PROMPTS",
    "LOSSES",
    "PACKAGED_LM",
    "RENAMED_KEYS",
    "EnsembleSettings",
    "RoundSettings",
    "SettingsError",
    "TEST_FRACTION",
    "TrainingSettings",
    "check_method",
    "check_number",
    "known_methods",
    "pipeline_methods",
    "range_problem",
    "refuse_renamed",
    "renamed_key_message",
]

#: The packaged model (SmolLM2-135M-Instruct) every model role defaults to: pool, judge, policy.
PACKAGED_LM = "smollm2-135m-instruct"
#: Prompts per round of the pipeline (`round_prompts`, `auf demo --batch-size`; the paper: 64).
DEFAULT_ROUND_PROMPTS = 8
#: Share of the prompts held out: the released dataset's test split and training's evaluation.
TEST_FRACTION = 0.1
LOSSES = ("dpo", "ipo", "simpo")

#: Keys that were renamed: (where, old key) -> new key. Old keys fail with a message naming the
#: new one (see `renamed_key_message`); README "What changed" lists them.
RENAMED_KEYS: dict[tuple[str, str], str] = {
    ("selected_pairs", "beta"): "acquisition_width",
    ("simulation", "beta"): "acquisition_width",
    ("benchmark", "beta"): "acquisition_width",
    ("training", "beta"): "dpo_beta",
}


class SettingsError(ValueError):
    """A setting with a value that cannot be used; the message names it and what is allowed."""


def renamed_key_message(where: str, old: str) -> str:
    new = RENAMED_KEYS[(where, old)]
    return f"{where}: the key {old!r} was renamed to {new!r}; set {new} instead"


def refuse_renamed(where: str, data: Any) -> Any:
    """``data`` unchanged; SettingsError naming the new key when it sets a renamed one (for a
    pydantic ``model_validator(mode="before")`` and for dict configs)."""
    if isinstance(data, Mapping):
        for old, value in data.items():
            if (where, old) in RENAMED_KEYS and value is not None:
                raise SettingsError(renamed_key_message(where, old))
    return data


def known_methods() -> list[str]:
    """Every selectable method of a simulated run (the registry, `core.methods`): reward-model
    and policy-aware rules, static oracle baselines."""
    return method_names()


def pipeline_methods() -> list[str]:
    """The methods a pipeline round can select with (no oracle baselines)."""
    return [name for family in ROUND_FAMILIES for name in method_names(family)]


def check_choice(value: Any, known: list[str], what: str) -> None:
    if value not in known:
        raise SettingsError(f"unknown {what} {value!r}; valid: {', '.join(known)}")


def check_method(value: Any, families: tuple[str, ...] | None = None) -> None:
    """A selection method of the registry (of those families); the message lists the names."""
    try:
        get_method(value, families=families)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def range_problem(
    value: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    integer: bool = False,
    finite: bool = True,
) -> str | None:
    """``"must be an integer in [1, inf), got -5"`` when ``value`` is out of range, else None."""
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else "(-inf"
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else "inf)"
    kind = "an integer" if integer else "a finite number" if finite else "a number"
    ok = _is_int(value) if integer else _is_real(value)
    if ok and math.isnan(value):
        ok = False
    if ok and finite and not integer and math.isinf(value):
        ok = False
    if ok:
        ok = (
            (ge is None or value >= ge)
            and (gt is None or value > gt)
            and (le is None or value <= le)
            and (lt is None or value < lt)
        )
    return None if ok else f"must be {kind} in {low}, {high}, got {value!r}"


def check_number(name: str, value: Any, **bounds: Any) -> None:
    """Raise SettingsError naming ``name`` when ``value`` is out of range (see range_problem)."""
    problem = range_problem(value, **bounds)
    if problem:
        raise SettingsError(f"{name} {problem}")


def _from_mapping(cls, data: Mapping[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    refuse_renamed(where, data)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    return cls(**data)


@dataclass
class EnsembleSettings:
    """The running reward model's hyper-parameters that shape learning (defaults: the paper's
    reference, spec section 2). See :class:`~auf_assets.core.ensemble.EnsembleConfig` for what
    each does; it adds the run's own seed and compute options to these."""

    n_heads: int = 20
    hidden: tuple[int, ...] = (128, 128)
    lr: float = 5e-5
    weight_decay: float = 0.0
    anchor_lambda0: float = 1.0
    anchor_half_life: float = 1000.0
    center_coef: float = 0.01
    replay_capacity: int = 6400
    batch_size: int = 64
    max_steps: int = 100
    min_steps: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if isinstance(self.hidden, (list, np.ndarray)):
            self.hidden = tuple(int(h) for h in self.hidden)
        for name in ("n_heads", "replay_capacity", "batch_size", "max_steps"):
            check_number(f"{owner}.{name}", getattr(self, name), ge=1, integer=True)
        check_number(f"{owner}.min_steps", self.min_steps, ge=0, integer=True)
        if (
            not isinstance(self.hidden, tuple)
            or len(self.hidden) == 0
            or not all(_is_int(h) and h >= 1 for h in self.hidden)
        ):
            raise SettingsError(
                f"{owner}.hidden must be a non-empty list of integers >= 1, got {self.hidden!r}"
            )
        self.hidden = tuple(int(h) for h in self.hidden)
        check_number(f"{owner}.lr", self.lr, gt=0)
        for name in ("weight_decay", "anchor_lambda0", "center_coef"):
            check_number(f"{owner}.{name}", getattr(self, name), ge=0)
        if self.weight_decay * self.lr >= 1.0:
            raise SettingsError(f"{owner}.weight_decay * lr must be < 1")
        # inf disables the decay
        check_number(f"{owner}.anchor_half_life", self.anchor_half_life, gt=0, finite=False)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(EnsembleSettings))

    def learning(self) -> dict[str, Any]:
        """The :class:`EnsembleSettings` fields only (also of a subclass), ``hidden`` a list."""
        out = {k: getattr(self, k) for k in EnsembleSettings.field_names()}
        out["hidden"] = list(self.hidden)
        return out


@dataclass
class RoundSettings:
    """One round's recipe (defaults: the ``default`` preset; see the module docstring)."""

    method: str = "deltaucb"
    encoder: str = "text-stats"
    acquisition_width: float = 1.0
    warmup_rounds: int = 0
    train_passes: int = 3
    ensemble: EnsembleSettings = field(default_factory=lambda: EnsembleSettings(min_steps=3))

    def __post_init__(self) -> None:
        if isinstance(self.ensemble, Mapping):
            self.ensemble = _from_mapping(EnsembleSettings, self.ensemble, "ensemble")
        check_method(self.method)
        try:
            parse_encoder(self.encoder)
        except (ValueError, AttributeError) as exc:
            raise SettingsError(f"encoder: {exc}") from None
        check_number("acquisition_width", self.acquisition_width, ge=0)
        check_number("warmup_rounds", self.warmup_rounds, ge=0, integer=True)
        check_number("train_passes", self.train_passes, ge=1, integer=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundSettings:
        return _from_mapping(cls, data, "round")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ensemble"] = self.ensemble.learning()
        return out

    def with_overrides(self, **overrides: Any) -> RoundSettings:
        """A checked copy with ``overrides``; an ``ensemble`` mapping merges into the ensemble."""
        ensemble = overrides.pop("ensemble", None) or {}
        if isinstance(ensemble, EnsembleSettings):
            ensemble = ensemble.learning()
        merged = _from_mapping(
            EnsembleSettings, {**self.ensemble.learning(), **ensemble}, "ensemble"
        )
        return replace(self, **overrides, ensemble=merged)


@dataclass(frozen=True)
class TrainingSettings:
    """Hyper-parameters of one downstream training run (defaults: the CPU policy preset; the
    presets for GPUs and reward models are in :data:`auf_assets.core.presets.TRAINING_PRESETS`).

    ``dpo_beta`` is DPO's beta (IPO's tau, SimPO's beta); ``max_steps`` 0 lets ``epochs`` decide;
    ``device`` ``auto`` is the first GPU if there is one, else the CPU; ``bf16`` and
    ``gradient_checkpointing`` ``None`` mean: on a GPU (that supports it).
    """

    loss: str = "dpo"
    dpo_beta: float = 0.1
    learning_rate: float = 5e-4
    epochs: float = 1.0
    max_steps: int = 0
    batch_size: int = 4
    grad_accum: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    max_length: int = 384
    simpo_gamma: float = 0.5
    seed: int = 0
    device: str = "auto"
    bf16: bool | None = None
    gradient_checkpointing: bool | None = None

    def __post_init__(self) -> None:
        check_choice(self.loss, list(LOSSES), "loss")
        check_number("dpo_beta", self.dpo_beta, gt=0)
        check_number("learning_rate", self.learning_rate, gt=0)
        check_number("epochs", self.epochs, ge=0)
        check_number("max_steps", self.max_steps, ge=0, integer=True)
        for name in ("batch_size", "grad_accum", "lora_r", "lora_alpha"):
            check_number(name, getattr(self, name), ge=1, integer=True)
        check_number("lora_dropout", self.lora_dropout, ge=0, lt=1)
        check_number("max_length", self.max_length, ge=1, integer=True)
        check_number("simpo_gamma", self.simpo_gamma, ge=0)
        if self.epochs <= 0 and self.max_steps <= 0:
            raise SettingsError("give epochs > 0 or max_steps > 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingSettings:
        return _from_mapping(cls, data, "training")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
