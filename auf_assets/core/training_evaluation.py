"""Evaluating what training produced (:mod:`auf_assets.core.training`), no Dagster: a trained
policy or reward model loaded from its LoRA adapter, the policy's implicit-reward accuracy
(``beta * (log pi - log pi_ref)``) and the reward model's pairwise accuracy on held-out pairs, and
a policy's win rate against the base with a 95% Wilson interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .chat_lm import load_tokenizer, sequence_logps
from .devices import choose_device


def load_policy(base_dir: str | Path, adapter_dir: str | Path, device: str = "auto"):
    """(tokenizer, PeftModel) ready for scoring; `model.disable_adapter()` gives the reference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    target = choose_device(device)  # a wrong name fails before the model loads
    tokenizer = load_tokenizer(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return tokenizer, model.to(target).eval()


def response_logps(model, tokenizer, prompts, responses, *, batch_size=8, max_length=1024):
    """Sum of log pi(response tokens | prompt) per (prompt turns, response turns) pair."""
    return sequence_logps(
        model, tokenizer, prompts, responses, max_length=max_length, batch_size=batch_size
    )[0]


def implicit_reward_accuracy(
    model, tokenizer, rows: Sequence[dict], beta: float, *, batch_size: int = 8
) -> dict[str, float]:
    """How often beta * (log pi - log pi_ref) ranks chosen above rejected (ties count half)."""
    if not rows:
        return {"accuracy": float("nan"), "mean_margin": float("nan"), "pairs": 0}
    prompts = [r["prompt"] for r in rows]
    policy_c = response_logps(
        model, tokenizer, prompts, [r["chosen"] for r in rows], batch_size=batch_size
    )
    policy_r = response_logps(
        model, tokenizer, prompts, [r["rejected"] for r in rows], batch_size=batch_size
    )
    with model.disable_adapter():
        ref_c = response_logps(
            model, tokenizer, prompts, [r["chosen"] for r in rows], batch_size=batch_size
        )
        ref_r = response_logps(
            model, tokenizer, prompts, [r["rejected"] for r in rows], batch_size=batch_size
        )
    margin = beta * ((policy_c - ref_c) - (policy_r - ref_r))
    accuracy = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
    return {"accuracy": accuracy, "mean_margin": float(np.mean(margin)), "pairs": len(rows)}


def load_reward_model(base_dir: str | Path, adapter_dir: str | Path, device: str = "auto"):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    target = choose_device(device)  # a wrong name fails before the model loads
    tokenizer = load_tokenizer(base_dir)
    tokenizer.padding_side = "right"
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return tokenizer, model.to(target).eval()


def reward_scores(model, tokenizer, conversations, *, batch_size=8, max_length=1024) -> np.ndarray:
    import torch

    device = next(model.parameters()).device
    texts = [tokenizer.apply_chat_template(list(c), tokenize=False) for c in conversations]
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            add_special_tokens=False,
        ).to(device)
        with torch.no_grad():
            out.append(model(**enc).logits[:, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def reward_model_accuracy(model, tokenizer, rows: Sequence[dict]) -> dict[str, float]:
    """Held-out pairwise accuracy of a reward model (ties count half)."""
    if not rows:
        return {"accuracy": float("nan"), "mean_margin": float("nan"), "pairs": 0}
    chosen = reward_scores(model, tokenizer, [list(r["prompt"]) + list(r["chosen"]) for r in rows])
    rejected = reward_scores(
        model, tokenizer, [list(r["prompt"]) + list(r["rejected"]) for r in rows]
    )
    margin = chosen - rejected
    return {
        "accuracy": float(np.mean((margin > 0) + 0.5 * (margin == 0))),
        "mean_margin": float(np.mean(margin)),
        "pairs": len(rows),
    }


def win_rate(policy_scores: Sequence[float], base_scores: Sequence[float], *, tie_margin=0.0):
    """Share of comparisons the policy wins (ties half), with a 95% Wilson interval.

    Comparisons where either score is missing (NaN: the judge failed) are left out and counted.
    """
    p = np.asarray(policy_scores, dtype=float)
    b = np.asarray(base_scores, dtype=float)
    ok = ~(np.isnan(p) | np.isnan(b))
    diff = p[ok] - b[ok]
    wins = int((diff > tie_margin).sum())
    losses = int((diff < -tie_margin).sum())
    ties = int(ok.sum()) - wins - losses
    n = wins + losses + ties
    if n == 0:
        return {
            "win_rate": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "wins": 0,
            "ties": 0,
            "losses": 0,
            "comparisons": 0,
            "failed": int((~ok).sum()),
        }
    rate = (wins + 0.5 * ties) / n
    z = 1.959963984540054
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {
        "win_rate": rate,
        "ci_low": max(0.0, centre - half),
        "ci_high": min(1.0, centre + half),
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "comparisons": n,
        "failed": int((~ok).sum()),
    }
