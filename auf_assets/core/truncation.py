"""Cutting something too long to a limit while keeping its start and its end."""

from __future__ import annotations


def head_and_tail(length: int, limit: int) -> tuple[int, int]:
    """How many leading and trailing units (characters, tokens) of something ``length`` long to
    keep within ``limit``: everything when it fits, else three quarters of ``limit`` from the
    start (where an instruction usually is) and a quarter from the end (a question asked last)."""
    if length <= limit:
        return length, 0
    tail = limit // 4
    return limit - tail, tail


def keep_head_and_tail(text: str, limit: int, marker: str) -> str:
    """``text`` cut to ``limit`` characters by :func:`head_and_tail`, with ``marker`` (formatted
    with ``n``, the characters left out) where the middle was cut."""
    head, tail = head_and_tail(len(text), limit)
    if not tail:
        return text
    return text[:head] + marker.format(n=len(text) - head - tail) + text[len(text) - tail :]
