"""What every language-model backend takes and answers with (`resources.transformers_lm` and
`resources.vllm_lm` for the local ones, `resources.openai_api` for servers): conversations,
generations, usage counts and first-token log-probs keyed by their text (and the vocabulary
tokens that read as a candidate answer)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Conversation = list[dict[str, str]]
Progress = Callable[[int, int], None]

# What a lossy UTF-8 decode writes for bytes that form no character.
REPLACEMENT_CHARACTER = "\ufffd"


def whole_characters(text: str) -> str:
    """Generated text with only complete characters, without surrounding whitespace.

    A byte-level tokenizer spells a multi-byte character with several tokens, so a generation
    cut at `max_new_tokens` can end inside one, and a small model can emit a lead byte without
    its continuation; decoding writes U+FFFD for those bytes (vLLM and servers too). They are
    dropped: a broken character carries no text, and a dataset should not show one.
    """
    return text.replace(REPLACEMENT_CHARACTER, "").strip()


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)


@dataclass
class Usage:
    """What a language model was asked for: the ledger's raw counts (thread-safe)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: int = 0
    retries: int = 0
    cached: int = 0  # answers taken from an earlier attempt's call cache, not asked again

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + int(value))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                k: getattr(self, k)
                for k in (
                    "requests",
                    "prompt_tokens",
                    "completion_tokens",
                    "failures",
                    "retries",
                    "cached",
                )
            }


def collapse_by_text(entries: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Log-probs of distinct tokens keyed by their text; tokens that read alike (`▁4` and `4`)
    add their probabilities (log-sum-exp) instead of one hiding the other."""
    out: dict[str, float] = {}
    for text, value in entries:
        if not math.isfinite(value):
            continue
        out[text] = float(np.logaddexp(out[text], value)) if text in out else float(value)
    return out


def candidate_token_ids(tokenizer, candidates: Sequence[str]) -> list[int]:
    """Every vocabulary token that reads as one of `candidates` once whitespace and the
    byte-level/SentencePiece space markers are stripped (`4`, `Ġ4`, `▁4`)."""
    wanted = set(candidates)
    vocab = tokenizer.get_vocab()
    return sorted(
        i for piece, i in vocab.items() if piece.strip().lstrip("\u0120\u2581").strip() in wanted
    )
