"""Feature settings shared by the pipeline's encoder and the simulator: one meaning everywhere.

An encoder setting is a ``+``-joined list of blocks, each one of:

* ``minilm`` (alias of the packaged ``all-minilm-l6-v2``), any packaged encoder name, or a local
  transformers directory: pooled hidden states (``pooling`` mean or last-token, ``max_length``,
  ``dtype``), L2-normalised;
* ``text-stats``: the cheap statistics of :mod:`auf_assets.core.text_features` (no model).

e.g. ``minilm``, ``text-stats`` or ``minilm+text-stats`` (the blocks are concatenated).

:func:`scale_block` puts every block on one scale before a reward model sees it: a transformer
block's unit vector is multiplied by sqrt(dim), so the average component has unit variance, and
text statistics are z-scored with fixed reference statistics. The pipeline
(:class:`resources.encoder.FeatureEncoder`) and the simulator (:mod:`auf_assets.pool_features`)
both call it, so a setting chosen in the simulator means the same in a real round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from auf_assets.core.text_features import TEXT_FEATURES_VERSION, scale_text_statistics

__all__ = [
    "ENCODER_ALIASES",
    "SCALING_VERSION",
    "TEXT_STATS",
    "EncoderBlock",
    "parse_encoder",
    "scale_block",
]

#: Short names accepted wherever an encoder setting is.
ENCODER_ALIASES = {"minilm": "all-minilm-l6-v2"}
TEXT_STATS = "text-stats"
#: Bump when :func:`scale_block` changes (it is part of the pipeline's feature-cache key).
SCALING_VERSION = 1


@dataclass(frozen=True)
class EncoderBlock:
    """One block of an encoder setting (see the module docstring)."""

    name: str
    pooling: str = "mean"
    max_length: int = 512
    dtype: str = "bf16"

    @property
    def is_text_stats(self) -> bool:
        return self.name == TEXT_STATS

    @property
    def key(self) -> str:
        """Identifies the cached vectors (everything that changes them)."""
        if self.is_text_stats:
            return f"{TEXT_STATS}:v{TEXT_FEATURES_VERSION}"
        return f"{self.name}:{self.pooling}:{self.max_length}-l2:{self.dtype}"


def parse_encoder(
    spec: str,
    *,
    pooling: str = EncoderBlock.pooling,
    max_length: int = EncoderBlock.max_length,
    dtype: str = EncoderBlock.dtype,
) -> list[EncoderBlock]:
    """``"minilm+text-stats"`` -> blocks; unknown names are taken as model sources (a packaged
    name or a transformers directory) and resolved when first encoded."""
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
    if dtype not in ("bf16", "fp16", "fp32", "auto"):
        raise ValueError(f"dtype must be one of bf16, fp16, fp32, auto; got {dtype!r}")
    parts = [p.strip() for p in spec.split("+")]
    if not spec.strip() or any(not p for p in parts):
        raise ValueError(f"bad encoder setting {spec!r}: use e.g. minilm, text-stats, a+b")
    blocks = []
    for part in parts:
        name = ENCODER_ALIASES.get(part, part)
        if name == TEXT_STATS:
            blocks.append(EncoderBlock(TEXT_STATS))
        else:
            blocks.append(EncoderBlock(name, pooling, int(max_length), dtype))
    return blocks


def scale_block(block: EncoderBlock, raw: np.ndarray) -> np.ndarray:
    """A block's raw output (float32 or fp16, ``[n, d]``) on the common feature scale, float32."""
    if block.is_text_stats:
        return scale_text_statistics(raw)
    # L2-normalised vectors: scale so the average component has unit variance, like z-scores.
    return np.asarray(raw, dtype=np.float32) * np.float32(math.sqrt(raw.shape[1]))
