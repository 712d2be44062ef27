"""A causal LM over chat turns, as TRL's DPO training sees it: the pieces that training
(:mod:`auf_assets.core.training`) and policy scoring (:mod:`auf_assets.core.policy`) share.

- :func:`load_tokenizer`: the base model's tokenizer, with a pad token;
- :func:`lora_config`: the adapter layout (every linear layer);
- :func:`sequence_logps`: summed response-token log-probs of (prompt turns, response turns),
  each conversation formatted with the chat template exactly as TRL's DPO training does.

No Dagster import here; torch, transformers and peft are imported when used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def load_tokenizer(base_dir: str | Path):
    """The base model's tokenizer; the end-of-sequence token pads where it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def lora_config(r: int, alpha: int, task_type: str, dropout: float = 0.0):
    """A LoRA adapter on every linear layer: works for any architecture without naming modules."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear",
        task_type=task_type,
    )


def encode_conversation(
    tokenizer, prompt_turns, response_turns, max_length: int
) -> tuple[list[int], int]:
    """Token ids of the whole conversation (cut at max_length) and where the response starts.

    The response starts where the prompt's ids (with the generation prompt) stop being a prefix
    of the conversation's, as TRL finds it; a prompt that fills max_length leaves no response
    token (such a pair is not scored: TRL drops it from training too).
    """
    head = tokenizer.apply_chat_template(
        list(prompt_turns), add_generation_prompt=True, tokenize=False
    )
    full = tokenizer.apply_chat_template(list(prompt_turns) + list(response_turns), tokenize=False)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    start = 0
    for a, b in zip(head_ids, full_ids, strict=False):
        if a != b:
            break
        start += 1
    full_ids = full_ids[:max_length]
    return full_ids, max(1, min(start, len(full_ids)))


def encoded_response_logps(model, items, pad_id: int):
    """Summed log-probs of each encoded item's response tokens (token t is predicted at t - 1);
    a torch tensor, with the graph when gradients are on."""
    import torch

    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, (row, _) in enumerate(items):  # right padding: positions line up with the text
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    # log p(token) = logit - logsumexp(logits): no second [B, L, vocab] log-softmax tensor
    picked = logits.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    return torch.stack(
        [token_logps[i, head - 1 : len(row) - 1].sum() for i, (row, head) in enumerate(items)]
    )


def sequence_logps(
    model,
    tokenizer,
    prompts: Sequence[Sequence[dict]],
    responses: Sequence[Sequence[dict]],
    *,
    max_length: int = 1024,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log pi(response tokens | prompt) and the response's token count per (prompt turns,
    response turns) pair, batched; the chat template formats them as TRL's DPO training does."""
    import torch

    items = [
        encode_conversation(tokenizer, p, r, max_length)
        for p, r in zip(prompts, responses, strict=True)
    ]
    out = np.zeros(len(items))
    tokens = np.array([len(row) - head for row, head in items], dtype=np.int64)
    # Longest first: batches of similar length waste less padding.
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            values = encoded_response_logps(model, [items[i] for i in idx], tokenizer.pad_token_id)
            out[idx] = values.cpu().numpy()
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    return out, tokens
