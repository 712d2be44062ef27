"""The generation engine resource: turns conversations into responses on CPU or GPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import dagster as dg
from pydantic import Field

from resources import home
from resources.models import Conversation, Generation, Progress, language_model


class GenerationEngine(dg.ConfigurableResource):
    """Batched text generation. `transformers` runs anywhere; `vllm` is the GPU engine."""

    backend: Literal["transformers", "vllm"] = "transformers"
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="auto = bf16 autocast (1.1x fp32 at batch 8 on CPU)"
    )
    batch_size: int = Field(default=8, ge=1, description="sequences per generate call")
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1, description="vLLM only")

    def generate(
        self,
        model: str,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        progress: Progress | None = None,
    ) -> list[Generation]:
        lm = language_model(
            self.backend,
            model,
            device=self.device,
            dtype=self.dtype,
            cache_dir=str(home.models_dir()),
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
        return lm.generate(
            conversations,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=self.batch_size,
            progress=progress,
        )
