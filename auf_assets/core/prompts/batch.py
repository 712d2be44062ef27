"""What ingestion hands back: :class:`PromptBatch`, and the prompt ids and the text form used
to tell repeats apart."""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field

import polars as pl

# The longest prompt ingestion accepts, in characters (about 4,000 tokens of English text).
MAX_PROMPT_CHARS = 16_000
# The largest JSON Lines, JSON or CSV prompt file read (they are read whole; Parquet is read by
# columns and has no limit): a pool of 60,000 prompts of 16,000 characters fits.
MAX_PROMPT_FILE_BYTES = 1_000_000_000


@dataclass
class PromptBatch:
    """A validated prompt pool.

    ``prompts`` has the columns ``prompt_id``, ``prompt`` and ``source`` (all text), unique ids,
    in input order. ``duplicates`` lists the dropped repeats as
    ``{"row", "prompt_id", "duplicate_of_row"}``; ``empty`` lists the dropped empty prompts as
    ``{"row"}``; ``too_long`` the prompts over ``max_prompt_chars`` as
    ``{"row", "prompt_id", "chars"}``. ``origin`` says where the prompts came from (a path or a
    dataset description).
    """

    prompts: pl.DataFrame
    duplicates: list[dict] = field(default_factory=list)
    empty: list[dict] = field(default_factory=list)
    origin: str = ""
    too_long: list[dict] = field(default_factory=list)
    max_prompt_chars: int | None = MAX_PROMPT_CHARS

    def __len__(self) -> int:
        return self.prompts.height

    def summary(self) -> str:
        """One line for logs, e.g. ``48 prompts from X (2 duplicates, 1 empty dropped)``."""
        n = self.prompts.height
        line = f"{n} prompt{'' if n == 1 else 's'} from {self.origin}"
        dropped = []
        if self.duplicates:
            d = len(self.duplicates)
            dropped.append(f"{d} duplicate{'' if d == 1 else 's'}")
        if self.empty:
            dropped.append(f"{len(self.empty)} empty")
        if self.too_long:
            dropped.append(f"{len(self.too_long)} over {self.max_prompt_chars:,} characters")
        if dropped:
            line += f" ({', '.join(dropped)} dropped)"
        return line

    def too_long_report(self, shown: int = 10) -> str | None:
        """What was dropped for its length, naming ids and the setting (None: nothing)."""
        if not self.too_long:
            return None
        ids = [entry["prompt_id"] for entry in self.too_long]
        more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
        longest = max(entry["chars"] for entry in self.too_long)
        return (
            f"{len(ids)} prompt{'' if len(ids) == 1 else 's'} longer than "
            f"{self.max_prompt_chars:,} characters dropped (the longest has {longest:,}): "
            f"{', '.join(ids[:shown])}{more}; raise max_prompt_chars to keep them"
        )


def normalise_prompt(prompt: str) -> str:
    """Canonical form used for ids and duplicate detection: NFC, whitespace runs collapsed."""
    return " ".join(unicodedata.normalize("NFC", prompt).split())


def stable_prompt_id(prompt: str) -> str:
    """A deterministic id from the whitespace-normalised text: ``"p-"`` + 16 hex of its SHA-256.

    Prompts that differ only in spacing or line breaks get the same id.
    """
    digest = hashlib.sha256(normalise_prompt(prompt).encode("utf-8")).hexdigest()
    return "p-" + digest[:16]
