"""Stable hashes and seeds derived from names: the same in every process and on every machine
(Python's `hash()` of a string changes between processes)."""

from __future__ import annotations

import hashlib


def stable_hash(*parts: object, length: int = 16) -> str:
    """The first `length` hex digits of the SHA-256 of the parts' texts (joined by U+001F)."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def stable_seed(*parts: object) -> int:
    """A 31-bit seed derived from names."""
    return int(stable_hash(*parts, length=8), 16) & 0x7FFFFFFF
