"""The reward-model judge (spec section 3): a sequence-classification model's scalar score.

Any transformers `AutoModelForSequenceClassification` checkpoint with one output (a reward model
such as Skywork-Reward or a RewardBench entry) scores each (prompt, response); the pair's chosen
response is the higher-scored one, decided by the `judgements` asset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Literal

import dagster as dg
import numpy as np
import torch
from pydantic import Field

from auf_assets.core.devices import choose_device
from resources.lm_types import Progress
from resources.loaded_models import LOADED, release_gpu_models
from resources.model_loading import resolve_source, weights_dtype
from resources.pair_scoring import map_pairs

log = logging.getLogger(__name__)


def _load_reward_model(source: str, device: torch.device, dtype: str):
    """(tokenizer, model), kept like the other models (one per GPU at a time)."""
    weights = weights_dtype(dtype, device)
    slot = str(device) if device.type == "cuda" else None
    key = ("reward-model", source, str(device), str(weights))
    return LOADED.get(key, slot, lambda: _build_reward_model(source, device, weights))


def _build_reward_model(source: str, device: torch.device, weights: torch.dtype):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_source(source).path
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=weights)
    if model.config.num_labels != 1:
        raise ValueError(
            f"{source} has {model.config.num_labels} outputs; a reward-model judge needs a "
            "scalar reward head (num_labels=1)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    log.info("loaded reward model %s in %.1fs", source, time.perf_counter() - started)
    return tokenizer, model


class RewardModelJudge(dg.ConfigurableResource):
    """Scores (prompt, response) with a scalar reward model; batched, on CPU or GPU."""

    model: str = Field(
        default="", description="local directory or cached Hugging Face repo id of the reward model"
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="fp32", description="fp32 keeps close rewards apart; bf16/fp16 are faster on GPU"
    )
    batch_size: int = Field(default=8, ge=1)
    max_length: int = Field(default=2048, ge=8, description="tokens per (prompt, response)")
    confidence_temperature: float = Field(
        default=1.0,
        gt=0,
        description="a verdict's confidence is sigmoid(reward gap / this): 1 reads the rewards "
        "as Bradley-Terry scores; larger values for a judge that is too sure of itself",
    )

    @property
    def name(self) -> str:
        return f"reward_model:{self.model}"

    def teardown_after_execution(self, context) -> None:
        release_gpu_models()

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], progress: Progress | None = None
    ) -> np.ndarray:
        """One float reward per (prompt, response), in input order."""
        if not self.model:
            raise ValueError(
                "the reward-model judge has no model: set resources.reward_judge.config.model "
                "to a sequence-classification checkpoint"
            )
        device = choose_device(self.device)
        tokenizer, model = _load_reward_model(self.model, device, self.dtype)
        rewards = map_pairs(
            tokenizer,
            model,
            prompts,
            responses,
            lambda out, _mask: out.logits[:, 0],
            device=device,
            dtype=self.dtype,
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=progress,
        )
        return rewards.astype(np.float64)
