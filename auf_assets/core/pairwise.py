"""Pairwise LLM-as-a-judge: one question per pair, asked in both orders, no Dagster.

The judge sees the request and two responses as "A" and "B" and answers with one letter; its
first-token distribution restricted to the letters gives P(the response shown first is better).
Every pair is asked twice, once with each response first, and the two answers are averaged in
the pair's own order, so a judge that likes the first (or the second) position cannot favour
either side of a pair. How much it does like a position is measured from the same two answers
(`position_bias`): a swapped order flips a verdict when the judge picks the same *position*
both times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from auf_assets.core.judging import RUBRICS, bounded_text

LETTERS = ("A", "B")

_SYSTEM_PROMPT = (
    "You are a strict, impartial evaluator of AI assistant responses. You compare two responses "
    "to the same request and say which one is better overall. The order in which they are shown "
    "and their length say nothing about their quality. Reply with a single letter, A or B, and "
    "nothing else."
)


def pairwise_messages(
    prompt: str,
    first: str,
    second: str,
    *,
    max_prompt_chars: int = 3000,
    max_response_chars: int = 4000,
) -> list[dict]:
    """Chat messages asking which of two responses (shown as A = `first`, B = `second`) is
    better, on the rubric judge's four aspects together; inputs bounded as the rubric judge's."""
    asked = bounded_text(prompt, max_prompt_chars, "prompt")
    a = bounded_text(first, max_response_chars, "response")
    b = bounded_text(second, max_response_chars, "response")
    criteria = "\n".join(f"- {text.splitlines()[0]}" for text in RUBRICS.values())
    user = (
        "Which response answers the user's request better? Weigh these together:\n"
        f"{criteria}\n\n"
        f"<user_request>\n{asked}\n</user_request>\n\n"
        f"<response_A>\n{a}\n</response_A>\n\n"
        f"<response_B>\n{b}\n</response_B>\n\n"
        "Answer with one letter, A or B, and nothing else."
    )
    return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class LetterChoice:
    """One answer: P(A is better) among the two letters, or None when neither letter showed up
    among the log-probs; `letter_mass` is the probability the judge put on the two letters."""

    p_first: float | None
    letter_mass: float


def _token_letter(token: str) -> str | None:
    stripped = token.strip().lstrip("\u0120\u2581").strip()
    return stripped if stripped in LETTERS else None


def choice_from_top_logprobs(top_logprobs: Mapping[str, float]) -> LetterChoice:
    """P(A) / (P(A) + P(B)) from the first token's log-probs ("A", " A", "ĠA" add up)."""
    mass = {letter: 0.0 for letter in LETTERS}
    for token, logprob in top_logprobs.items():
        letter = _token_letter(str(token))
        value = float(logprob)
        if letter is None or math.isnan(value):
            continue
        mass[letter] += math.exp(min(value, 0.0))
    total = mass["A"] + mass["B"]
    if total <= 0.0:
        return LetterChoice(None, 0.0)
    return LetterChoice(mass["A"] / total, min(total, 1.0))


def probability_a_better(as_shown: float | None, swapped: float | None) -> float:
    """P(the pair's response a is better) from the two orders: `as_shown` is P(first better)
    with a first, `swapped` with b first. One order failing leaves the other; both: NaN."""
    votes = []
    if as_shown is not None:
        votes.append(as_shown)
    if swapped is not None:
        votes.append(1.0 - swapped)
    return float(np.mean(votes)) if votes else math.nan


@dataclass(frozen=True)
class PositionBias:
    """Over the pairs answered in both orders: how often the swapped order flipped the winner
    (the judge picked the same position twice), and how often a single answer picked the first
    position (0.5 for a judge without a position preference)."""

    pairs: int
    flip_rate: float
    first_position_rate: float


def position_bias(
    as_shown: Sequence[float | None], swapped: Sequence[float | None]
) -> PositionBias:
    both = [
        (x, y) for x, y in zip(as_shown, swapped, strict=True) if x is not None and y is not None
    ]
    if not both:
        return PositionBias(0, math.nan, math.nan)
    flips = sum((x > 0.5) == (y > 0.5) for x, y in both)
    firsts = sum((x > 0.5) + (y > 0.5) for x, y in both)
    return PositionBias(len(both), flips / len(both), firsts / (2 * len(both)))
