"""The settings of one simulated run (:class:`SimulationConfig`), checked when built."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..ensemble import EnsembleConfig
from ..methods import get_method, method_names
from ..settings import RoundSettings, refuse_renamed
from .evaluation import EvalModelConfig

# The default preset (what a run gets when nothing else is said).
_DEFAULT_ROUND = RoundSettings()


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
