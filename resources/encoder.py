"""The frozen feature encoder resource: one feature vector per (prompt, response)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import dagster as dg
import numpy as np
import torch
from pydantic import Field, model_validator

from auf_assets.core.devices import choose_device
from auf_assets.core.features import SCALING_VERSION, EncoderBlock, parse_encoder, scale_block
from auf_assets.core.settings import RoundSettings
from auf_assets.core.text_features import text_statistics
from resources import home
from resources.lm_types import Progress
from resources.loaded_models import release_gpu_models
from resources.model_loading import load_tokenizer_and_model
from resources.pair_scoring import map_pairs


def _old_keys_message(data: dict) -> str:
    """The run config's old `model` + `text_stats` keys as the one spec that replaced them."""
    model = data.get("model")
    stats = data.get("text_stats")
    blocks = ([model] if model else []) + (["text-stats"] if stats or stats is None else [])
    spec = "+".join(blocks) or "text-stats"
    return (
        "encoder: the keys 'model' and 'text_stats' were replaced by one spec, 'encoder' (the "
        f"same as `auf simulate --encoder`): set encoder: {spec!r}"
    )


class FeatureEncoder(dg.ConfigurableResource):
    """Features of each (prompt, response): frozen backbones, text statistics, or both.

    `encoder` is one spec, the same as `auf simulate --encoder` and parsed by the same function
    (`auf_assets.core.features.parse_encoder`): blocks joined by `+`, each `text-stats`, `minilm`
    (the packaged all-minilm-l6-v2), a packaged encoder name or a transformers directory. The
    blocks and their scaling are the simulator's: a backbone's pooled, L2-normalised vector times
    sqrt(dim), the text statistics z-scored with fixed reference statistics, concatenated; so a
    setting chosen there means the same in a round. Any transformers backbone works:
    `pooling="last"` takes the last non-padding token's state, as the reference does with a
    reward-model body.
    """

    encoder: str = Field(
        default=RoundSettings().encoder,
        description="blocks joined by '+': text-stats, minilm (all-minilm-l6-v2), a packaged "
        "encoder name or a transformers dir; e.g. 'minilm+text-stats'",
    )
    pooling: Literal["mean", "last"] = "mean"
    max_length: int = Field(default=EncoderBlock.max_length, ge=8)
    batch_size: int = Field(default=32, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="auto = bf16 autocast: about 2x faster than fp32 on CPU"
    )
    normalize: bool = Field(
        default=True,
        description="L2-normalise the pooled vectors (then scaled by sqrt(dim)); off: raw states",
    )
    model: str | None = Field(
        default=None, exclude=True, description="replaced by encoder: setting it is an error"
    )
    text_stats: bool | None = Field(
        default=None, exclude=True, description="replaced by encoder: setting it is an error"
    )

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(k) is not None for k in ("model", "text_stats")):
            raise ValueError(_old_keys_message(data))
        return data

    @model_validator(mode="after")
    def _check(self) -> FeatureEncoder:
        self.blocks()
        return self

    def blocks(self) -> list[EncoderBlock]:
        # The compute dtype changes the vectors slightly: fp32 and bf16 features never mix.
        precision = (
            "fp32" if self.dtype == "fp32" else "bf16" if self.dtype == "auto" else self.dtype
        )
        return parse_encoder(
            self.encoder, pooling=self.pooling, max_length=self.max_length, dtype=precision
        )

    @property
    def key(self) -> str:
        """Identifies features made by this encoder setting (the feature-cache key)."""
        keys = [
            b.key if b.is_text_stats or self.normalize else b.key.replace("-l2:", ":")
            for b in self.blocks()
        ]
        return "+".join(keys) + f"|z{SCALING_VERSION}"

    def encode(
        self, prompts: Sequence[str], responses: Sequence[str], progress: Progress | None = None
    ) -> np.ndarray:
        """Features [n, dim] (float32) for each (prompt, response), on the common scale."""
        if len(prompts) == 0:
            return np.empty((0, 0), dtype=np.float32)
        parts = []
        for block in self.blocks():
            if block.is_text_stats:
                parts.append(scale_block(block, text_statistics(prompts, responses)))
                continue
            raw = self.backbone_features(prompts, responses, progress, block)
            parts.append(scale_block(block, raw) if self.normalize else raw)
        return np.concatenate(parts, axis=1)

    def teardown_after_execution(self, context) -> None:
        release_gpu_models()  # the next step (maybe in this process) gets the GPU's memory

    def backbone_features(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        progress: Progress | None = None,
        block: EncoderBlock | None = None,
    ) -> np.ndarray:
        """A backbone's pooled vectors [n, dim] before scaling (L2-normalised if `normalize`):
        `block`'s, or the one backbone of the spec."""
        if block is None:
            backbones = [b for b in self.blocks() if not b.is_text_stats]
            if len(backbones) != 1:
                raise ValueError(f"encoder {self.encoder!r}: name the backbone block")
            block = backbones[0]
        device = choose_device(self.device)
        tokenizer, model = load_tokenizer_and_model(
            block.name, "encoder", str(device), str(home.models_dir()), self.dtype
        )

        def pooled(outputs, mask: torch.Tensor) -> torch.Tensor:
            vectors = _pool(outputs.last_hidden_state.float(), mask, self.pooling)
            return torch.nn.functional.normalize(vectors, dim=-1) if self.normalize else vectors

        features = map_pairs(
            tokenizer,
            model,
            prompts,
            responses,
            pooled,
            device=device,
            dtype=self.dtype,
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=progress,
        )
        return features.reshape(len(prompts), -1)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    # Right padding: the last real token sits at length - 1.
    last = mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
