"""`TrainingSettings`: the base models, device and hyper-parameters of downstream training.

`dpo_policy`, `reward_model_checkpoint` and `policy_eval` all read it, so the policy that is
evaluated is the one that was trained, with the same beta and the same held-out split. Fields
left empty (None) take the preset for the device (`auf_assets.core.training.PRESETS`: the
spec's settings on a GPU, small fast ones on CPU); see docs/training.md.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field, field_validator

from auf_assets.core.checkpoints import base_fields
from auf_assets.core.training import TrainSettings, preset
from resources import home
from resources.model_loading import PACKAGED_MODELS, local_model_dir, resolve_source


class TrainingSettings(dg.ConfigurableResource):
    """Downstream training with TRL + PEFT: DPO/IPO/SimPO policies and reward models."""

    base_model: str = Field(
        default="smollm2-135m-instruct",
        description="the policy's base: a packaged name, a local HF checkpoint or a cached repo id",
    )
    reward_base_model: str = Field(default="", description="empty: base_model")
    device: str = Field(default="auto", description="auto (the first GPU, else CPU), cpu, cuda:N")
    beta: float = Field(default=0.1, gt=0, description="DPO beta (IPO tau); also used in eval")
    test_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="held-out prompts; keep it equal to preference_dataset's test_fraction",
    )
    learning_rate: float | None = Field(default=None, gt=0)
    epochs: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="when set, overrides epochs")
    batch_size: int | None = Field(default=None, ge=1)
    grad_accum: int | None = Field(default=None, ge=1)
    lora_r: int | None = Field(default=None, ge=1)
    lora_alpha: int | None = Field(default=None, ge=1)
    max_length: int | None = Field(default=None, ge=1, description="tokens per prompt + response")
    bf16: bool | None = Field(default=None, description="None: on a GPU that supports it")
    gradient_checkpointing: bool | None = Field(default=None, description="None: on a GPU")
    checkpoint_dir: str = Field(default="", description="empty: $AUF_HOME/checkpoints")

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

    def settings(self, kind: str, *, loss: str = "dpo", seed: int = 0) -> TrainSettings:
        return preset(
            kind,
            self.device,
            loss=loss,
            seed=seed,
            beta=self.beta,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            grad_accum=self.grad_accum,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            max_length=self.max_length,
            bf16=self.bf16,
            gradient_checkpointing=self.gradient_checkpointing,
        )

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
