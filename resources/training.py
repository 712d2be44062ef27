"""`TrainingSettings`: the base models, device and hyper-parameters of downstream training.

`dpo_policy`, `reward_model_checkpoint` and `policy_eval` all read it, so the policy that is
evaluated is the one that was trained, with the same beta and the same held-out split. Fields
left empty (None) take the preset for the device (`auf_assets.core.training.PRESETS`: the
spec's settings on a GPU, small fast ones on CPU); see docs/training.md.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from auf_assets.core.training import TrainSettings, preset
from resources import home
from resources.models import local_model_dir


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

    def checkpoint_root(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else home.auf_home() / "checkpoints"
