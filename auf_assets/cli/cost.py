"""`auf cost`: what the rounds of this home cost, from the ledger and the price table."""

from __future__ import annotations

import argparse
import json

from auf_assets.cli.common import prepare_home, round_arg


def _cost(args: argparse.Namespace) -> int:
    root = prepare_home()
    import polars as pl

    from auf_assets.core.costs import (
        PriceTable,
        PriceTableError,
        known_sum,
        price_rows,
        round_totals,
    )
    from resources.ledger import ledger_from_env, readable_prices
    from resources.store import DuckDBStore

    ledger = ledger_from_env()
    if ledger.env_errors:
        print("; ".join(ledger.env_errors))
        return 2
    if args.prices:
        try:  # a table named on the command line must be readable
            prices = PriceTable.load(args.prices)
        except PriceTableError as exc:
            print(exc)
            return 2
    else:  # the configured one: like a round, carry on without dollars
        prices = readable_prices(ledger, warn=lambda message: print(f"warning: {message}"))
    store = DuckDBStore()
    if not store.database.exists():
        print(f"no rounds yet: {store.database} does not exist (run `auf demo`)")
        return 0
    rounds = [args.round] if args.round else None
    if args.round and args.round not in set(store.rounds()["round_id"]):
        print(f"no round {args.round!r} in {root} (`auf rounds` lists them)")
        return 2
    priced = price_rows(store.usage(rounds), prices)
    if args.json:
        print(json.dumps(priced.with_columns(pl.col(pl.Datetime).cast(pl.String)).to_dicts()))
        return 0
    print(f"home: {root}; prices: {prices.source}")
    if priced.height == 0:
        print("the ledger is empty: no model step has run here yet")
        return 0
    per_actor = (
        priced.group_by("round_id", "step", "actor", "model", "backend")
        .agg(
            pl.len().alias("attempts"),
            pl.col("requests").sum(),
            pl.col("cached").sum(),
            pl.col("prompt_tokens").sum(),
            pl.col("completion_tokens").sum(),
            pl.col("wall_seconds").sum(),
            # Unknown (no local GPU, no GPU count for the server, no price table) stays
            # unknown, not 0.
            known_sum("gpu_seconds"),
            pl.col("failures").sum(),
            pl.col("retries").sum(),
            known_sum("dollars"),
        )
        .sort("round_id", "step", "actor")
    )
    header = (
        f"{'round':<11} {'step':<12} {'actor':<28} {'tries':>5} {'requests':>8} {'cached':>6} "
        f"{'prompt tok':>11} {'compl tok':>10} {'wall s':>8} {'GPU s':>8} {'fail':>5} "
        f"{'retry':>5} {'dollars':>9}"
    )
    print(header)
    for r in per_actor.iter_rows(named=True):
        print(
            f"{r['round_id']:<11} {r['step']:<12} {r['actor'][:28]:<28} {r['attempts']:>5} "
            f"{r['requests']:>8} {r['cached']:>6} {r['prompt_tokens']:>11,} "
            f"{r['completion_tokens']:>10,} {r['wall_seconds']:>8.1f} "
            f"{_known(r['gpu_seconds'], '{:.1f}'):>8} {r['failures']:>5} {r['retries']:>5} "
            f"{_known(r['dollars'], '{:.4f}'):>9}"
        )
    totals = round_totals(priced)
    print("\nper round:")
    for r in totals.iter_rows(named=True):
        print(
            f"  {r['round_id']}: {r['requests']:,} requests, {r['tokens']:,} tokens, "
            f"{_known(r['gpu_seconds'], '{:.1f}')} GPU-s, {r['failures']} failures, "
            f"{_known(r['dollars'], '${:.4f}')}"
        )
    dollars = totals["dollars"].drop_nulls()
    spent = f"${float(dollars.sum()):.4f}" if len(dollars) else "$- (no price table)"
    print(f"total: {int(totals['tokens'].sum()):,} tokens, {spent} over {totals.height} round(s)")
    budget = ledger.budget()
    if budget.limited:
        refusal = ledger.refusal(store)
        print(f"budget: {refusal or 'another round fits'}")
    return 0


def _known(value: float | None, fmt: str) -> str:
    """A measured value, or "-" where it is not known (never a made-up 0)."""
    return "-" if value is None else fmt.format(value)


def add_commands(sub) -> None:
    cost = sub.add_parser(
        "cost",
        help="what each round cost: requests, tokens, GPU-seconds, failures and dollars",
        description="The ledger of this home's model steps, priced with the price table "
        "(AUF_PRICES or $AUF_HOME/prices.yaml; see auf_assets/core/costs.py for its format).",
    )
    cost.add_argument(
        "--round", type=round_arg, help="one round (a number or key: 2, round-0002); default: all"
    )
    cost.add_argument("--prices", help="a price table to use instead of the configured one")
    cost.add_argument("--json", action="store_true", help="the priced ledger rows as JSON")
    cost.set_defaults(func=_cost)
