"""The transformers language-model backend: batched generation and first-token log-probs on
the CPU or one GPU, with prompts longer than the model's context cut in the middle."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from auf_assets.core.devices import choose_device
from auf_assets.core.truncation import head_and_tail
from resources.lm_types import (
    Conversation,
    Generation,
    Progress,
    Usage,
    candidate_token_ids,
    collapse_by_text,
    whole_characters,
)
from resources.model_loading import autocast_dtype, load_tokenizer_and_model

log = logging.getLogger(__name__)

# Put where the middle of a prompt longer than a model's context was cut.
CONTEXT_CUT_MARKER = "\n[...]\n"
# Prompts longer than this (tokens) are read in chunks of it, so each operation stays short
# enough for an interrupt (Ctrl-C) to land within seconds, however long the prompt.
PREFILL_CHUNK_TOKENS = 512


def _batches(order: Sequence[int], size: int):
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _template_kwargs(tokenizer, enable_thinking: bool) -> dict:
    # Only templates that know the switch get it (Qwen3's does; most ignore unknown names anyway).
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"enable_thinking": enable_thinking} if "enable_thinking" in str(template) else {}


class TransformersLM:
    """Batched inference with transformers; bf16 autocast on CPU where requested."""

    backend = "transformers"

    def __init__(
        self,
        source: str,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | None = None,
        enable_thinking: bool = False,
    ):
        self.source = source
        self.device = choose_device(device)
        self.autocast = autocast_dtype(dtype, self.device)
        self.tokenizer, self.model = load_tokenizer_and_model(
            source, "causal", str(self.device), cache_dir, dtype
        )
        self.template_kwargs = _template_kwargs(self.tokenizer, enable_thinking)
        self.usage = Usage()
        self._candidates: dict[tuple[str, ...], list[int]] = {}

    @property
    def context_length(self) -> int | None:
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    def _render(self, conversation: Conversation, assistant_prefix: str = "") -> str:
        text = self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, **self.template_kwargs
        )
        return text + assistant_prefix

    def _encode(self, texts: list[str], room: int = 0) -> dict[str, torch.Tensor]:
        """Left-padded token ids (generation continues from the right edge) of `texts`, each
        cut to the context less `room` tokens where it is longer: its start (the system prompt
        and an instruction given first) and its end (a question asked last, the turn for the
        answer) are kept, the middle is cut, rather than the whole batch failing."""
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        limit = self.context_length
        if limit and limit > room + 8:
            rows = self._fit(rows, limit - room)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _fit(self, rows: list[list[int]], budget: int) -> list[list[int]]:
        if all(len(r) <= budget for r in rows):
            return rows
        marker = self.tokenizer(CONTEXT_CUT_MARKER, add_special_tokens=False)["input_ids"]
        room = max(budget - len(marker), 2)
        head, tail = head_and_tail(room + 1, room)  # of any row that does not fit
        log.warning(
            "%d prompt(s) longer than the %d tokens %s has room for: kept the first %d and the "
            "last %d tokens of each",
            sum(len(r) > budget for r in rows),
            budget,
            self.source,
            head,
            tail,
        )
        return [r if len(r) <= budget else r[:head] + marker + r[len(r) - tail :] for r in rows]

    def _autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.autocast or torch.float32,
            enabled=self.autocast is not None,
        )

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[Generation]:
        texts = [self._render(c) for c in conversations]
        # Similar lengths together waste less padding; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[Generation | None] = [None] * len(texts)
        eos_ids = _eos_ids(self.tokenizer, self.model)
        done = 0
        for batch_no, idx in enumerate(_batches(order, batch_size)):
            enc = self._encode([texts[i] for i in idx], room=max_new_tokens)
            torch.manual_seed(seed * 1_000_003 + batch_no)
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_p": top_p}
                if temperature > 0
                else {"do_sample": False}
            )
            long_prompts = enc["input_ids"].shape[1] > PREFILL_CHUNK_TOKENS
            chunked = {"prefill_chunk_size": PREFILL_CHUNK_TOKENS} if long_prompts else {}
            with torch.inference_mode(), self._autocast():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                    **chunked,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(idx):
                tokens = new[row].tolist()
                stop = next((k for k, t in enumerate(tokens) if t in eos_ids), None)
                kept = tokens if stop is None else tokens[:stop]
                results[i] = Generation(
                    # The whole sequence at once: a character spelt by several tokens stays
                    # whole; one cut at max_new_tokens is dropped.
                    text=whole_characters(self.tokenizer.decode(kept, skip_special_tokens=True)),
                    prompt_tokens=int(prompt_lens[row]),
                    completion_tokens=len(kept),
                    finish_reason="length" if stop is None else "stop",
                )
            self.usage.add(
                requests=len(idx),
                prompt_tokens=sum(int(n) for n in prompt_lens),
                completion_tokens=sum(results[i].completion_tokens for i in idx),  # type: ignore[union-attr]
            )
            done += len(idx)
            if progress:
                progress(done, len(texts))
        return results  # type: ignore[return-value]

    def first_token_logprobs(
        self,
        conversations: Sequence[Conversation],
        *,
        assistant_prefix: str = "",
        top_k: int = 20,
        candidates: Sequence[str] = (),
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[dict[str, float]]:
        """Each conversation's first-token log-probs, keyed by token text: the top-k, and every
        token that reads as one of `candidates` exactly (whatever its rank)."""
        key = tuple(candidates)
        if key and key not in self._candidates:
            self._candidates[key] = candidate_token_ids(self.tokenizer, candidates)
        wanted = torch.tensor(self._candidates.get(key, []), dtype=torch.long)
        texts = [self._render(c, assistant_prefix) for c in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[dict[str, float] | None] = [None] * len(texts)
        done = 0
        for idx in _batches(order, batch_size):
            enc = self._encode([texts[i] for i in idx], room=1)
            with torch.inference_mode(), self._autocast():
                logits = self.model(**enc).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            _, top_ids = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
            for row, i in enumerate(idx):
                ids = sorted(set(top_ids[row].tolist()) | set(wanted.tolist()))
                results[i] = collapse_by_text(
                    [(self.tokenizer.decode([t]), float(logprobs[row, t])) for t in ids]
                )
            self.usage.add(
                requests=len(idx),
                prompt_tokens=int(enc["attention_mask"].sum()),
                completion_tokens=len(idx),
            )
            done += len(idx)
            if progress:
                progress(done, len(texts))
        return results  # type: ignore[return-value]


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    generation_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos:
        ids.update(generation_eos)
    return {i for i in ids if i is not None}
