"""`TrainingResource`: the base models, device and overrides of downstream training.

`dpo_policy`, `reward_model_checkpoint`, `policy_eval` and the policy loop all read it, so the
policy that is evaluated is the one that was trained, with the same `dpo_beta` and the same
held-out split. The hyper-parameters are one `TrainingSettings` (`auf_assets.core.settings`) per
run: the preset for the device (`TRAINING_PRESETS`: the spec's settings on a GPU, small fast ones
on the CPU) with the fields set here (None: the preset's) on top; see docs/training.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, field_validator, model_validator

from auf_assets.core.checkpoints import base_fields
from auf_assets.core.presets import TRAINING_PRESETS
from auf_assets.core.settings import PACKAGED_LM, TEST_FRACTION, refuse_renamed
from auf_assets.core.training import TrainingSettings, training_settings
from resources import home
from resources.model_loading import PACKAGED_MODELS, local_model_dir, resolve_source

#: The fields that override the preset's TrainingSettings (None: the preset's value).
OVERRIDES = (
    "dpo_beta",
    "learning_rate",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "lora_r",
    "lora_alpha",
    "max_length",
    "bf16",
    "gradient_checkpointing",
)


class TrainingResource(dg.ConfigurableResource):
    """Downstream training with TRL + PEFT: DPO/IPO/SimPO policies and reward models."""

    base_model: str = Field(
        default=PACKAGED_LM,
        description="the policy's base: a packaged name, a local HF checkpoint or a cached repo id",
    )
    reward_base_model: str = Field(default="", description="empty: base_model")
    device: str = Field(default="auto", description="auto (the first GPU, else CPU), cpu, cuda:N")
    test_fraction: float = Field(
        default=TEST_FRACTION,
        ge=0,
        lt=1,
        description="held-out prompts; keep it equal to preference_dataset's test_fraction",
    )
    dpo_beta: float | None = Field(
        default=None,
        description="DPO beta (IPO tau), also used in evaluation; None: the preset's "
        f"({TrainingSettings().dpo_beta:g})",
    )
    learning_rate: float | None = None
    epochs: float | None = None
    max_steps: int | None = Field(default=None, description="when set, overrides epochs")
    batch_size: int | None = None
    grad_accum: int | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    max_length: int | None = Field(default=None, description="tokens per prompt + response")
    bf16: bool | None = Field(default=None, description="None: on a GPU that supports it")
    gradient_checkpointing: bool | None = Field(default=None, description="None: on a GPU")
    checkpoint_dir: str = Field(default="", description="empty: $AUF_HOME/checkpoints")
    beta: float | None = Field(
        default=None, exclude=True, description="renamed to dpo_beta: setting it is an error"
    )

    @field_validator("device")
    @classmethod
    def _a_device(cls, value: str) -> str:
        if value != "auto":
            import torch

            try:
                torch.device(value)
            except RuntimeError:
                raise ValueError(
                    f"device must be auto, cpu, cuda or cuda:N (a torch device), got {value!r}"
                ) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return refuse_renamed("training", data)

    @model_validator(mode="after")
    def _check(self) -> TrainingResource:
        # The overrides checked on a preset (the ranges do not depend on the device).
        for kind in ("policy", "reward_model"):
            TrainingSettings(**{**TRAINING_PRESETS["cpu"][kind].to_dict(), **self.overrides()})
        return self

    def overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in OVERRIDES if getattr(self, k) is not None}

    def settings(self, kind: str, *, loss: str = "dpo", seed: int = 0) -> TrainingSettings:
        return training_settings(kind, self.device, loss=loss, seed=seed, **self.overrides())

    @property
    def policy_dpo_beta(self) -> float:
        """The DPO beta of the policy (the same on every device)."""
        return self.dpo_beta if self.dpo_beta is not None else TrainingSettings().dpo_beta

    def base_dir(self, kind: str = "policy") -> Path:
        source = self.reward_base_model if kind == "reward_model" else ""
        return local_model_dir(source or self.base_model, home.models_dir())

    def check_sources(self) -> None:
        """Raise ModelSourceError for a base model that cannot be found, before any model loads.

        A packaged model is only looked up (its conversion into a folder loads it); a folder or
        a cached repo id is resolved to its files.
        """
        for source in {self.base_model, self.reward_base_model or self.base_model}:
            resolve_source(source)
            if source not in PACKAGED_MODELS:
                local_model_dir(source, home.models_dir())

    def base_fields(self, kind: str, out_dir: Path) -> dict:
        """How the checkpoint at `out_dir` names its base model (portable: core.checkpoints)."""
        source = (self.reward_base_model if kind == "reward_model" else "") or self.base_model
        return base_fields(self.base_dir(kind), source, home.auf_home(), out_dir)

    def checkpoint_root(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else home.auf_home() / "checkpoints"
