"""Running a scoring or encoding model (the reward judge, the feature encoder) over
(prompt, response) pairs, batched by length."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from resources.lm_types import Progress
from resources.model_loading import autocast_dtype


def pair_texts(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    """Chat-formatted (prompt, response) when the backbone has a chat template, else plain."""
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                tokenize=False,
            )
            for p, r in zip(prompts, responses, strict=True)
        ]
    return [f"User: {p}\nAssistant: {r}" for p, r in zip(prompts, responses, strict=True)]


def map_pairs(
    tokenizer,
    model,
    prompts: Sequence[str],
    responses: Sequence[str],
    reduce: Callable[[object, torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    dtype: str,
    batch_size: int,
    max_length: int,
    progress: Progress | None = None,
) -> np.ndarray:
    """Run a scoring/encoding model over every (prompt, response), batched by length.

    `reduce(outputs, attention_mask)` turns one batch's model outputs into rows (features, a
    scalar reward); the rows come back as float32 in input order.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    texts = pair_texts(tokenizer, prompts, responses)
    amp = autocast_dtype(dtype, device)
    tokenizer.padding_side = "right"  # last-token pooling relies on it
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        ).to(device)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None),
        ):
            rows = reduce(model(**enc), enc["attention_mask"]).float()
        if out is None:
            out = np.empty((len(texts), *rows.shape[1:]), dtype=np.float32)
        out[idx] = rows.cpu().numpy()
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return out if out is not None else np.empty((0,), dtype=np.float32)
