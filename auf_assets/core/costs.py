"""What rounds cost: a user-editable price table, and the budget guard's arithmetic.

A price table is YAML (or JSON) that a team keeps next to its deployment:

    # $ per million tokens, per model name as the pipeline calls it (a pool member's or the
    # judge's `model`); "*" prices every model not listed.
    models:
      gpt-4o-mini: {input: 0.15, output: 0.60}
      Qwen/Qwen3-32B: {input: 0.0, output: 0.0}   # self-hosted: paid by the GPU-hour below
      "*": {input: 0.0, output: 0.0}
    gpu_hour: 2.50      # $ per GPU-hour of steps that ran on a GPU of ours

The file is read as UTF-8; a UTF-16 or UTF-32 file with its byte-order mark (what Windows
editors write as "Unicode") is read too. Any other file that cannot be read is a
`PriceTableError` naming it: callers then price nothing rather than fail a round. Only a
regular file of at most 1 MB is read (a fifo would hang the round; see `user_files`), and no
message quotes the file: a bad entry is named by its place (`models.m.input`), a value by its type.

Ledger rows carry tokens and GPU-seconds; `price_rows` adds their dollars (null, unknown, when
there is no price table). The budget guard compares what was spent plus what the next round is
expected to add (the mean of the rounds so far) against the configured maxima.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from auf_assets.core.user_files import UserFileError, read_limited, yaml_problem

__all__ = [
    "Budget",
    "Price",
    "PriceTable",
    "PriceTableError",
    "Spending",
    "known_sum",
    "price_rows",
    "read_price_text",
    "round_totals",
]

# Byte-order marks of the encodings a price table may come in, longest first (the UTF-32 LE mark
# begins with the UTF-16 LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


# A price table is a few lines; anything larger is not one.
MAX_PRICE_TABLE_BYTES = 1_000_000


class PriceTableError(ValueError):
    """A price table that cannot be read or has a bad entry (the message names it)."""


@dataclass(frozen=True)
class Price:
    input: float = 0.0  # $ per million prompt tokens
    output: float = 0.0  # $ per million completion tokens


def _non_negative(value, where: str) -> float:
    # the value's type, not the value: the file may not be a price table at all
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PriceTableError(f"{where}: {_kind(value)} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise PriceTableError(f"{where}: {_kind(value)} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise PriceTableError(f"{where}: must be a finite number >= 0")
    return number


def _kind(value) -> str:
    if isinstance(value, str):
        return "text" if value.strip() else "an empty text"
    return "nothing" if value is None else f"a {type(value).__name__}"


def read_price_text(path: Path) -> str:
    """The text of a price table file: UTF-8, or UTF-16/32 with a byte-order mark."""
    try:
        data = read_limited(path, max_bytes=MAX_PRICE_TABLE_BYTES)
    except UserFileError as exc:
        raise PriceTableError(f"price table {path} cannot be read: {exc.problem}") from None
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise PriceTableError(
            f"price table {path} is not {encoding.upper()} text ({exc.reason} at byte "
            f"{exc.start}); save it as UTF-8"
        ) from None
    if "\x00" in text:  # ASCII saved as UTF-16 without its mark decodes as UTF-8 with NULs
        raise PriceTableError(
            f"price table {path} is not UTF-8 text (it holds NUL bytes: UTF-16 without a "
            "byte-order mark?); save it as UTF-8"
        )
    return text


@dataclass(frozen=True)
class PriceTable:
    """Prices per model and per GPU-hour; `known` is False for no table (nothing is priced)."""

    models: Mapping[str, Price] = field(default_factory=dict)
    gpu_hour: float = 0.0
    source: str = "none"
    known: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping, source: str = "mapping") -> PriceTable:
        if not isinstance(data, Mapping):
            raise PriceTableError(f"{source}: expected a mapping with 'models' and 'gpu_hour'")
        unknown = set(data) - {"models", "gpu_hour"}
        if unknown:
            raise PriceTableError(
                f"{source}: unknown key(s) {sorted(unknown)}; use 'models' and 'gpu_hour'"
            )
        models: dict[str, Price] = {}
        raw = data.get("models") or {}
        if not isinstance(raw, Mapping):
            raise PriceTableError(f"{source}: 'models' must map model names to prices")
        for name, entry in raw.items():
            if not isinstance(entry, Mapping) or set(entry) - {"input", "output"}:
                raise PriceTableError(
                    f"{source}: models.{name} must be {{input: $/1M tokens, output: $/1M tokens}}"
                )
            models[str(name)] = Price(
                _non_negative(entry.get("input", 0.0), f"{source}: models.{name}.input"),
                _non_negative(entry.get("output", 0.0), f"{source}: models.{name}.output"),
            )
        gpu_hour = _non_negative(data.get("gpu_hour", 0.0), f"{source}: gpu_hour")
        return cls(models, gpu_hour, source, known=True)

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        import yaml

        p = Path(path)
        if not p.exists():
            raise PriceTableError(f"price table {p} does not exist")
        text = read_price_text(p)
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            problem = yaml_problem(exc)
            raise PriceTableError(f"price table {p} is not valid YAML/JSON ({problem})") from None
        return cls.from_mapping(data, str(p))

    def price_of(self, model: str) -> Price:
        return self.models.get(model) or self.models.get("*") or Price()

    def dollars(
        self, model: str, prompt_tokens: float, completion_tokens: float, gpu_seconds: float
    ) -> float:
        price = self.price_of(model)
        tokens = (prompt_tokens * price.input + completion_tokens * price.output) / 1e6
        return tokens + (gpu_seconds or 0.0) / 3600.0 * self.gpu_hour


def price_rows(rows: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """Ledger rows with a `dollars` column (null where no price table is known)."""
    if rows.height == 0 or not prices.known:
        return rows.with_columns(pl.lit(None, dtype=pl.Float64).alias("dollars"))
    dollars = [
        prices.dollars(m, p, c, g or 0.0)
        for m, p, c, g in zip(
            rows["model"],
            rows["prompt_tokens"],
            rows["completion_tokens"],
            rows["gpu_seconds"].fill_null(0.0),
            strict=True,
        )
    ]
    return rows.with_columns(pl.Series("dollars", dollars, dtype=pl.Float64))


def known_sum(column: str) -> pl.Expr:
    """The sum of a column whose nulls mean "not known": null when none of it is known."""
    return (
        pl.when(pl.col(column).is_not_null().any())
        .then(pl.col(column).sum())
        .otherwise(None)
        .alias(column)
    )


def round_totals(priced: pl.DataFrame) -> pl.DataFrame:
    """One row per round: requests, tokens, GPU-seconds, failures, retries and dollars
    (GPU-seconds and dollars null where none are known)."""
    if priced.height == 0:
        return pl.DataFrame(
            schema={
                "round_id": pl.String,
                "requests": pl.Int64,
                "tokens": pl.Int64,
                "gpu_seconds": pl.Float64,
                "failures": pl.Int64,
                "retries": pl.Int64,
                "dollars": pl.Float64,
            }
        )
    return (
        priced.group_by("round_id")
        .agg(
            pl.col("requests").sum().cast(pl.Int64),
            (pl.col("prompt_tokens") + pl.col("completion_tokens"))
            .sum()
            .cast(pl.Int64)
            .alias("tokens"),
            known_sum("gpu_seconds"),
            pl.col("failures").sum().cast(pl.Int64),
            pl.col("retries").sum().cast(pl.Int64),
            known_sum("dollars"),
        )
        .sort("round_id")
    )


@dataclass(frozen=True)
class Spending:
    tokens: float = 0.0
    dollars: float = 0.0
    labels: float = 0.0


@dataclass(frozen=True)
class Budget:
    """Maxima for the whole home; 0 means no limit."""

    max_tokens: int = 0
    max_dollars: float = 0.0
    max_labels: int = 0

    @property
    def limited(self) -> bool:
        return bool(self.max_tokens or self.max_dollars or self.max_labels)

    def refusal(self, spent: Spending, next_round: Spending, rounds: int) -> str | None:
        """Why another round must not start (None when it may): what is spent, what a round
        adds on average, and which maximum that would pass."""
        checks = (
            ("tokens", self.max_tokens, spent.tokens, next_round.tokens, "{:,.0f}", "TOKENS"),
            ("dollars", self.max_dollars, spent.dollars, next_round.dollars, "${:,.2f}", "DOLLARS"),
            ("labels", self.max_labels, spent.labels, next_round.labels, "{:,.0f}", "LABELS"),
        )
        for what, limit, used, more, fmt, env in checks:
            if not limit:
                continue
            if used >= limit:
                return (
                    f"budget spent: {fmt.format(used)} {what} used of {fmt.format(limit)} "
                    f"(AUF_BUDGET_MAX_{env}); no new round"
                )
            if used + more > limit:
                return (
                    f"budget: {fmt.format(used)} {what} used of {fmt.format(limit)} "
                    f"(AUF_BUDGET_MAX_{env}); the next round would add about "
                    f"{fmt.format(more)} (the mean of {rounds} round(s)) and pass it: no new round"
                )
        return None
