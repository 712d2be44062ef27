"""The frozen feature encoder resource: one feature vector per (prompt, response)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import dagster as dg
import numpy as np
import torch
from pydantic import Field

from auf_assets.core.devices import choose_device
from auf_assets.core.features import (
    SCALING_VERSION,
    TEXT_STATS,
    EncoderBlock,
    encoder_parts,
    scale_block,
)
from auf_assets.core.presets import DEFAULT_PRESET, get_preset
from auf_assets.core.text_features import text_statistics
from resources import home
from resources.lm_types import Progress
from resources.loaded_models import release_gpu_models
from resources.model_loading import load_tokenizer_and_model
from resources.pair_scoring import map_pairs

# The default features are the default preset's (the split protocol's choice, see
# auf_assets/core/presets.py), so `auf simulate` and a round agree without any flag.
_DEFAULT_MODEL, _DEFAULT_TEXT_STATS = encoder_parts(get_preset(DEFAULT_PRESET)["encoder"])


class FeatureEncoder(dg.ConfigurableResource):
    """Features of each (prompt, response): a frozen backbone, text statistics, or both.

    The blocks and their scaling are those of the simulator (`auf_assets.core.features`): the
    backbone's pooled, L2-normalised vector times sqrt(dim), and the text statistics z-scored
    with fixed reference statistics, concatenated. So `model=all-minilm-l6-v2, text_stats=True`
    here is `--encoder minilm+text-stats` in `auf simulate`, and a setting chosen there means the
    same in a round. Any transformers backbone works: `pooling="last"` takes the last non-padding
    token's state, as the reference does with a reward-model body; `model=""` leaves it out.
    """

    model: str = Field(
        default=_DEFAULT_MODEL,
        description="packaged name, dir or repo id of the backbone (e.g. all-minilm-l6-v2); "
        "empty: text statistics only",
    )
    text_stats: bool = Field(
        default=_DEFAULT_TEXT_STATS,
        description="append the cheap text statistics (length, layout, refusals, ...): what a "
        "sentence encoder that truncates long responses barely sees",
    )
    pooling: Literal["mean", "last"] = "mean"
    max_length: int = Field(default=512, ge=8)
    batch_size: int = Field(default=32, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="auto = bf16 autocast: about 2x faster than fp32 on CPU"
    )
    normalize: bool = Field(
        default=True,
        description="L2-normalise the pooled vectors (then scaled by sqrt(dim)); off: raw states",
    )

    def blocks(self) -> list[EncoderBlock]:
        if not self.model and not self.text_stats:
            raise ValueError("the encoder needs a model, text_stats, or both")
        # The compute dtype changes the vectors slightly: fp32 and bf16 features never mix.
        precision = (
            "fp32" if self.dtype == "fp32" else "bf16" if self.dtype == "auto" else self.dtype
        )
        out = []
        if self.model:
            out.append(EncoderBlock(self.model, self.pooling, self.max_length, precision))
        if self.text_stats:
            out.append(EncoderBlock(TEXT_STATS))
        return out

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
            raw = self.backbone_features(prompts, responses, progress)
            parts.append(scale_block(block, raw) if self.normalize else raw)
        return np.concatenate(parts, axis=1)

    def teardown_after_execution(self, context) -> None:
        release_gpu_models()  # the next step (maybe in this process) gets the GPU's memory

    def backbone_features(
        self, prompts: Sequence[str], responses: Sequence[str], progress: Progress | None = None
    ) -> np.ndarray:
        """The backbone's pooled vectors [n, dim] before scaling (L2-normalised if `normalize`)."""
        device = choose_device(self.device)
        tokenizer, model = load_tokenizer_and_model(
            self.model, "encoder", str(device), str(home.models_dir()), self.dtype
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
