"""The policy being aligned, as a selector: log-probs, implicit rewards and gradient features.

Policy-aware selection (spec section 4; :mod:`auf_assets.core.policy_selection` has the rules)
scores candidate responses with the DPO policy itself: ``r(x, y) = beta * (log pi(y|x) -
log pi_ref(y|x))``. :class:`PolicyScorer` holds a causal LM with a LoRA adapter (pi) whose
disabled adapter is the reference (pi_ref), formats every (prompt, response) with the tokenizer's
chat template exactly as TRL's DPO training does (:mod:`auf_assets.core.chat_lm`), and gives:

* :meth:`PolicyScorer.logps`: summed response-token log-probs and token counts, batched, under
  pi or pi_ref (a fresh adapter starts at zero, so pi == pi_ref until the first DPO step);
* :meth:`PolicyScorer.gradient_features`: ActiveDPO's features, the gradient of r(x, y) with
  respect to the LoRA parameters only, one backward pass per response, projected to a fixed
  dimension by a seeded :class:`~auf_assets.core.policy_selection.CountSketch` (the same
  projection in every round and process for a seed).

:class:`ReferenceCache` keeps pi_ref's log-probs per (base model, prompt, response, max_length),
so the reference is computed once per response, never per round. :class:`PolicyLoop` is the
per-round policy of the simulator: score, then a warm-started DPO step on the labelled pairs
(TRL + PEFT, :func:`auf_assets.core.training.train_policy`), with the time of each part.

No Dagster import here; torch, transformers, peft and trl are imported when used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .chat_lm import (
    encode_conversation,
    encoded_response_logps,
    load_tokenizer,
    lora_config,
    sequence_logps,
)
from .devices import choose_device
from .policy_selection import CountSketch
from .settings import TrainingSettings, check_number
from .training import train_policy

__all__ = [
    "PolicyLoop",
    "PolicyLoopConfig",
    "PolicyScorer",
    "ReferenceCache",
    "conversation",
    "sequence_logps",
]

Log = Callable[[str], None]


def conversation(prompt: str, response: str) -> tuple[list[dict], list[dict]]:
    """A (prompt, response) pair of plain texts as chat turns, the layout DPO trains on."""
    return [{"role": "user", "content": prompt}], [{"role": "assistant", "content": response}]


class PolicyScorer:
    """A causal LM + LoRA adapter: pi with the adapter, pi_ref with it disabled.

    ``adapter_dir`` None starts a fresh adapter (zero update: pi == pi_ref), otherwise loads a
    trained one (trainable, so gradients can be taken).
    """

    def __init__(
        self,
        base_dir: str | Path,
        adapter_dir: str | Path | None = None,
        *,
        lora_r: int = 8,
        lora_alpha: int = 16,
        device: str = "auto",
        max_length: int = 384,
        batch_size: int = 8,
        seed: int = 0,
    ):
        import torch
        from peft import PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM

        device = choose_device(device)  # a wrong name fails before the model loads
        self.base_dir = Path(base_dir)
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.tokenizer = load_tokenizer(base_dir)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        if self.adapter_dir is None:
            torch.manual_seed(seed)  # LoRA A is random: seeded, so a fresh adapter is reproducible
            model = get_peft_model(base, lora_config(lora_r, lora_alpha, "CAUSAL_LM"))
        else:
            model = PeftModel.from_pretrained(base, str(self.adapter_dir), is_trainable=True)
        self.model = model.to(device).eval()

    # -- scoring --------------------------------------------------------------------------

    def logps(
        self,
        prompts: Sequence[Sequence[dict]],
        responses: Sequence[Sequence[dict]],
        *,
        reference: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed response log-probs and response token counts, under pi (or pi_ref)."""
        import contextlib

        off = self.model.disable_adapter() if reference else contextlib.nullcontext()
        with off:
            return sequence_logps(
                self.model,
                self.tokenizer,
                prompts,
                responses,
                max_length=self.max_length,
                batch_size=self.batch_size,
                progress=progress,
            )

    def lora_parameters(self) -> list[tuple[str, Any]]:
        """The adapter's parameters in a fixed (name) order: the gradient features' layout."""
        params = [(n, p) for n, p in self.model.named_parameters() if "lora_" in n]
        return sorted(params, key=lambda item: item[0])

    def n_lora_parameters(self) -> int:
        return int(sum(p.numel() for _, p in self.lora_parameters()))

    def gradient_features(
        self,
        prompts: Sequence[Sequence[dict]],
        responses: Sequence[Sequence[dict]],
        sketch: CountSketch,
        beta: float,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """[n, sketch.dim]: the projected gradient of beta * log pi(y|x) w.r.t. the LoRA weights.

        pi_ref does not depend on the adapter, so this is the gradient of the implicit reward.
        """
        import torch

        named = self.lora_parameters()
        params = [p for _, p in named]
        n_params = sum(p.numel() for p in params)
        if n_params != sketch.n_params:
            raise ValueError(
                f"the sketch projects {sketch.n_params} parameters but the adapter has {n_params}: "
                "build the sketch from this policy (n_lora_parameters())"
            )
        out = np.zeros((len(prompts), sketch.dim), dtype=np.float32)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            item = [encode_conversation(self.tokenizer, p, r, self.max_length)]
            logp = encoded_response_logps(self.model, item, self.tokenizer.pad_token_id)[0]
            grads = torch.autograd.grad(logp, params, allow_unused=True)
            flat = torch.cat(
                [
                    (g if g is not None else torch.zeros_like(w)).reshape(-1)
                    for g, w in zip(grads, params, strict=True)
                ]
            )
            out[i] = sketch.project(flat.detach().float().cpu().numpy()) * np.float32(beta)
            if progress is not None:
                progress(i + 1, len(prompts))
        return out


class ReferenceCache:
    """pi_ref's log-probs per (base model, prompt, response, max_length), optionally on disk."""

    def __init__(self, base_key: str, path: str | Path | None = None):
        self.base_key = base_key
        self.path = Path(path) if path else None
        self.values: dict[str, tuple[float, int]] = {}
        if self.path is not None and self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("base") == base_key:
                self.values = {k: (float(v[0]), int(v[1])) for k, v in data["values"].items()}

    def key(self, prompt, response, max_length: int) -> str:
        text = json.dumps([self.base_key, list(prompt), list(response), max_length])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def logps(self, scorer: PolicyScorer, prompts, responses) -> tuple[np.ndarray, np.ndarray, int]:
        """Reference log-probs and tokens for every pair; returns how many were computed now."""
        keys = [self.key(p, r, scorer.max_length) for p, r in zip(prompts, responses, strict=True)]
        missing = [i for i, k in enumerate(keys) if k not in self.values]
        if missing:
            values, tokens = scorer.logps(
                [prompts[i] for i in missing], [responses[i] for i in missing], reference=True
            )
            for i, v, t in zip(missing, values, tokens, strict=True):
                self.values[keys[i]] = (float(v), int(t))
            self.save()
        logp = np.array([self.values[k][0] for k in keys])
        tokens = np.array([self.values[k][1] for k in keys], dtype=np.int64)
        return logp, tokens, len(missing)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # parallel runs
        values = {k: list(v) for k, v in self.values.items()}
        tmp.write_text(json.dumps({"base": self.base_key, "values": values}))
        tmp.replace(self.path)


_TRAINING = TrainingSettings()  # the DPO defaults the loop shares with `auf train` on a CPU


@dataclass(frozen=True)
class PolicyLoopConfig:
    """The policy in the loop: DPO settings per round and ActiveDPO's projection.

    ``steps_per_round`` DPO steps after every round on all labelled pairs so far, warm-started
    from the previous round's adapter (the reference stays the base model).
    """

    dpo_beta: float = _TRAINING.dpo_beta
    steps_per_round: int = 8
    batch_size: int = _TRAINING.batch_size
    learning_rate: float = _TRAINING.learning_rate
    lora_r: int = _TRAINING.lora_r
    lora_alpha: int = _TRAINING.lora_alpha
    max_length: int = 256
    sketch_dim: int = 1024
    sketch_seed: int = 0
    lam: float = 1.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_number("policy loop dpo_beta", self.dpo_beta, gt=0)
        for name in ("steps_per_round", "batch_size", "lora_r", "lora_alpha", "sketch_dim"):
            check_number(f"policy loop {name}", getattr(self, name), ge=1, integer=True)
        check_number("policy loop learning_rate", self.learning_rate, gt=0)
        check_number("policy loop lam", self.lam, gt=0)
        check_number("policy loop max_length", self.max_length, ge=16, integer=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PolicyLoop:
    """The simulator's policy: scores a round's responses, then takes its DPO step.

    ``timings`` accumulates seconds per part: ``logprobs`` (pi and, once per response, pi_ref,
    for selection), ``gradients`` (ActiveDPO's features), ``training`` (the DPO steps) and
    ``evaluation`` (scoring the held-out responses; not part of a round's cost).
    """

    base_dir: Path
    config: PolicyLoopConfig = field(default_factory=PolicyLoopConfig)
    seed: int = 0
    reference: ReferenceCache | None = None
    log: Log = lambda msg: None  # noqa: E731
    adapter_dir: Path | None = None
    v_inv: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    rounds_trained: int = 0

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        self._scratch = Path(tempfile.mkdtemp(prefix="auf-policy-"))
        self._scorer: PolicyScorer | None = None
        if self.reference is None:
            self.reference = ReferenceCache(str(self.base_dir))
        self._sketch: CountSketch | None = None

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _time(self, part: str, started: float) -> None:
        self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - started

    def scorer(self) -> PolicyScorer:
        if self._scorer is None:
            c = self.config
            self._scorer = PolicyScorer(
                self.base_dir,
                self.adapter_dir,
                lora_r=c.lora_r,
                lora_alpha=c.lora_alpha,
                device=c.device,
                max_length=c.max_length,
                seed=self.seed,
            )
        return self._scorer

    def sketch(self) -> CountSketch:
        if self._sketch is None:
            n = self.scorer().n_lora_parameters()
            self._sketch = CountSketch(n, self.config.sketch_dim, self.config.sketch_seed)
        return self._sketch

    def implicit_rewards(
        self, prompts: Sequence[str], responses: Sequence[str], *, part: str = "logprobs"
    ) -> tuple[np.ndarray, np.ndarray]:
        """beta * (log pi - log pi_ref) per (prompt, response) text, and the response tokens
        scored (0: the prompt alone fills max_length, so the response cannot be scored)."""
        started = time.perf_counter()
        turns = [conversation(p, r) for p, r in zip(prompts, responses, strict=True)]
        ps, rs = [t[0] for t in turns], [t[1] for t in turns]
        scorer = self.scorer()
        assert self.reference is not None
        ref, tokens, _ = self.reference.logps(scorer, ps, rs)
        if self.adapter_dir is None:
            pol = ref  # a fresh adapter is the reference exactly: no second pass
        else:
            pol, _ = scorer.logps(ps, rs)
        self._time(part, started)
        return self.config.dpo_beta * (pol - ref), tokens

    def gradient_features(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        started = time.perf_counter()
        turns = [conversation(p, r) for p, r in zip(prompts, responses, strict=True)]
        out = self.scorer().gradient_features(
            [t[0] for t in turns], [t[1] for t in turns], self.sketch(), self.config.dpo_beta
        )
        self._time("gradients", started)
        return out

    def train(self, rows: Sequence[dict]) -> dict[str, Any]:
        """One round's DPO step on ``rows`` (TRL rows), warm-started from the last adapter."""
        started = time.perf_counter()
        c = self.config
        settings = TrainingSettings(
            dpo_beta=c.dpo_beta,
            learning_rate=c.learning_rate,
            max_steps=c.steps_per_round,
            batch_size=c.batch_size,
            lora_r=c.lora_r,
            lora_alpha=c.lora_alpha,
            max_length=c.max_length,
            seed=self.seed + self.rounds_trained,
            device=c.device,
        )
        out = self._scratch / f"round-{self.rounds_trained + 1:04d}"
        report = train_policy(
            self.base_dir, rows, settings, out, init_adapter=self.adapter_dir, log=self.log
        )
        if self.adapter_dir is not None and self.adapter_dir.parent == self._scratch:
            shutil.rmtree(self.adapter_dir, ignore_errors=True)
        self.adapter_dir = out
        self.rounds_trained += 1
        self._scorer = None  # reload with the new adapter (the sketch's layout stays the same)
        self._time("training", started)
        return {"steps": report.steps, "loss": report.last("loss"), "seconds": report.seconds}

    def with_config(self, **changes: Any) -> PolicyLoopConfig:
        return replace(self.config, **changes)
