"""The cost ledger and the budget guard.

Each model step records, per pool member or judge and per attempt, what it asked for: requests
(and how many answers came from the call cache of an earlier attempt), prompt and completion
tokens, wall time, GPU-seconds where the step ran on a GPU of ours (or on a server the config says
how many GPUs back), failures and retries. `CostLedger` prices those rows with the user's price
table (`auf_assets.core.costs`) for asset metadata, `auf cost` and the dataset card, and tells
the round sensors and the nightly schedule when another round would pass the budget.

Environment: `AUF_PRICES` (the price table; default `$AUF_HOME/prices.yaml` when it exists),
`AUF_BUDGET_MAX_TOKENS`, `AUF_BUDGET_MAX_DOLLARS`, `AUF_BUDGET_MAX_LABELS` (0 or unset: no
limit), read like every `AUF_*` setting (`resources.env_settings`): a bad value never stops the
code location from loading; it is kept in `problem`, the sensors skip with it and the CLI refuses
to start. A price table that cannot be read prices nothing (dollars unknown, with a warning naming
the file); only a dollar budget, which cannot be checked then, stops rounds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import dagster as dg
import polars as pl
from pydantic import Field

from auf_assets.core.costs import Budget, PriceTable, PriceTableError, Spending, price_rows
from auf_assets.core.markdown import markdown_table
from resources import home
from resources.env_settings import EnvSettings, from_env
from resources.lm_types import Usage
from resources.store import DuckDBStore, utcnow

log = logging.getLogger(__name__)

ENV_VARS = {
    "AUF_PRICES": "prices_path",
    "AUF_BUDGET_MAX_TOKENS": "max_tokens",
    "AUF_BUDGET_MAX_DOLLARS": "max_dollars",
    "AUF_BUDGET_MAX_LABELS": "max_labels",
}

USAGE_COLUMNS = {
    "run_id": pl.String,
    "round_id": pl.String,
    "step": pl.String,
    "actor": pl.String,
    "model": pl.String,
    "backend": pl.String,
    "endpoint": pl.String,
    "device": pl.String,
    "requests": pl.Int32,
    "cached": pl.Int32,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "wall_seconds": pl.Float64,
    "gpu_seconds": pl.Float64,
    "failures": pl.Int32,
    "retries": pl.Int32,
    "succeeded": pl.Boolean,
    "recorded_at": pl.Datetime,
}


class CostLedger(EnvSettings):
    """Prices for the ledger, and the budget the round sensors and the nightly schedule keep."""

    SETTINGS_NAME: ClassVar[str] = "budget"

    prices_path: str = Field(
        default="", description="price table (YAML/JSON); empty: $AUF_HOME/prices.yaml if present"
    )
    max_tokens: int = Field(default=0, ge=0, description="tokens for the whole home; 0 = no limit")
    max_dollars: float = Field(default=0.0, ge=0.0, description="dollars; 0 = no limit")
    max_labels: int = Field(default=0, ge=0, description="judged pairs; 0 = no limit")

    @property
    def problem(self) -> str | None:
        if self.env_errors:
            return super().problem
        try:
            self.prices()
        except PriceTableError as exc:
            return str(exc)
        return None

    def prices(self) -> PriceTable:
        path = Path(self.prices_path) if self.prices_path else home.auf_home() / "prices.yaml"
        if not self.prices_path and not path.exists():
            return PriceTable()
        return PriceTable.load(path)

    def budget(self) -> Budget:
        return Budget(self.max_tokens, self.max_dollars, self.max_labels)

    def refusal(self, store: DuckDBStore) -> str | None:
        """Why no further round may start under the budget (None: it may)."""
        if self.env_errors:
            return "; ".join(self.env_errors)
        budget = self.budget()
        if not budget.limited:
            return None
        try:
            prices = self.prices()
        except PriceTableError as exc:
            if budget.max_dollars:
                return f"{exc}: the dollar budget (AUF_BUDGET_MAX_DOLLARS) cannot be checked"
            prices = PriceTable()
        if budget.max_dollars and not prices.known:
            return (
                "AUF_BUDGET_MAX_DOLLARS is set but there is no price table to count dollars with "
                "(AUF_PRICES, or $AUF_HOME/prices.yaml)"
            )
        priced = price_rows(store.usage(), prices)
        labels = store.judgements_per_round()
        per_round = (
            priced.group_by("round_id")
            .agg(
                (pl.col("prompt_tokens") + pl.col("completion_tokens")).sum().alias("tokens"),
                pl.col("dollars").sum(),
            )
            .join(labels, on="round_id", how="full", coalesce=True)
            .fill_null(0)
        )
        rounds = per_round.height
        spent = Spending(
            float(per_round["tokens"].sum()),
            float(per_round["dollars"].sum()),
            float(per_round["labels"].sum()),
        )
        mean = (
            Spending(spent.tokens / rounds, spent.dollars / rounds, spent.labels / rounds)
            if rounds
            else Spending()
        )
        return budget.refusal(spent, mean, rounds)


def ledger_from_env(environ: Mapping[str, str] | None = None) -> CostLedger:
    """The ledger settings of the `AUF_PRICES`/`AUF_BUDGET_*` variables (bad values recorded)."""
    return from_env(CostLedger, ENV_VARS, environ)


@dataclass
class StepLedger:
    """Ledger rows of one attempt of one model step, written as each actor finishes (or fails)."""

    store: DuckDBStore
    run_id: str
    round_id: str
    step: str
    rows: list[dict] = field(default_factory=list)

    @contextlib.contextmanager
    def actor(
        self,
        actor: str,
        model: str,
        *,
        backend: str,
        endpoint: str | None = None,
        device: str | None = None,
        gpus: float = 0.0,
    ) -> Iterator[Usage]:
        """Count one actor's work; its row is recorded when the block ends, failed or not.

        GPU-seconds: wall time on a local GPU device, or wall time x `gpus` for a server whose
        config says how many GPUs back it; unknown (null) otherwise.
        """
        usage = Usage()
        started = time.perf_counter()
        ok = False
        try:
            yield usage
            ok = True
        finally:
            wall = time.perf_counter() - started
            counts = usage.snapshot()
            on_gpu = device is not None and device.startswith("cuda")
            gpu_seconds = wall if on_gpu else (wall * gpus if gpus else None)
            row = {
                "run_id": self.run_id,
                "round_id": self.round_id,
                "step": self.step,
                "actor": actor,
                "model": model,
                "backend": backend,
                "endpoint": endpoint,
                "device": device,
                **counts,
                "wall_seconds": wall,
                "gpu_seconds": gpu_seconds,
                "succeeded": ok,
                "recorded_at": utcnow(),
            }
            self.rows.append(row)
            self.store.record_usage(pl.DataFrame([row], schema=USAGE_COLUMNS))

    def metadata(self, prices: PriceTable) -> dict:
        """Totals for a step's materialisation metadata (no `dollars` without a price table)."""
        frame = price_rows(pl.DataFrame(self.rows, schema=USAGE_COLUMNS), prices)
        table = frame.select(
            "actor",
            "model",
            "requests",
            "cached",
            "prompt_tokens",
            "completion_tokens",
            pl.col("wall_seconds").round(2),
            "failures",
            "retries",
            pl.col("dollars").round(4),
        )
        dollars = {"dollars": round(float(frame["dollars"].sum()), 4)} if prices.known else {}
        return {
            "requests": int(frame["requests"].sum()),
            "cached_answers": int(frame["cached"].sum()),
            "failures": int(frame["failures"].sum()),
            "retries": int(frame["retries"].sum()),
            **dollars,
            "price_table": prices.source,
            "ledger": dg.MetadataValue.md(markdown_table(table, max_rows=len(self.rows))),
        }


_WARNED: set[str] = set()


def readable_prices(ledger: CostLedger, warn: Callable[[str], None] | None = None) -> PriceTable:
    """The ledger's price table; an unreadable one prices nothing, with one warning per process
    and problem through `warn` (default: this module's logger)."""
    try:
        return ledger.prices()
    except PriceTableError as exc:
        if str(exc) not in _WARNED:
            _WARNED.add(str(exc))
            (warn or log.warning)(f"{exc}: the ledger records tokens without dollars")
        return PriceTable(source=f"unreadable ({exc})")


def ledger_prices(context=None) -> PriceTable:
    """The price table the environment names; an unreadable one prices nothing, with a warning
    (a round never fails over its price table)."""
    return readable_prices(ledger_from_env(), context.log.warning if context is not None else None)
