"""How prompt ingestion fails: :class:`PromptInputError`, the wording helpers of its messages,
and the check of the ``limit``-like arguments."""

from __future__ import annotations

from typing import Any


class PromptInputError(ValueError):
    """Bad prompt input.

    The message names the file, the row (1-based, as a user counts lines/rows) where there is one,
    and the problem. ``origin`` and ``row`` are also kept as attributes for callers.
    """

    def __init__(self, origin: str, problem: str, *, row: int | None = None, where: str = "row"):
        self.origin = origin
        self.row = row
        self.problem = problem
        location = f"{origin}: {where} {row}: " if row is not None else f"{origin}: "
        super().__init__(location + problem)


def _describe_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object (dict)"
    return f"a {type(value).__name__}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_limit(limit: int | None, name: str = "limit") -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {limit!r}")
