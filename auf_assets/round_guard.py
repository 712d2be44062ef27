"""The round-chain guard of the round assets (reward-model round, policy loop, labels): one
process at a time works on the rounds of a home, and a run's whole config is checked first."""

from __future__ import annotations

import functools

import dagster as dg

from auf_assets.preflight import check_run_config
from resources.chain_lock import ChainBusy
from resources.store import DuckDBStore


def holds_round_chain(compute):
    """Run a round asset while holding its store's round-chain lock (the home's file lock,
    resources.chain_lock, or an advisory lock on a Postgres store, resources.store.chain), after
    checking the run's whole config (`auf_assets.preflight`).

    A second process working on the rounds of the same home at that moment makes this step fail
    with a message that names the holder, instead of letting two rounds interleave. A bad value
    anywhere in the run's config fails the run's first step, before any generation.
    """

    @functools.wraps(compute)
    def wrapper(context: dg.AssetExecutionContext, *args, **kwargs):
        check_run_config(context)
        store: DuckDBStore = kwargs["store"]
        what = (
            f"run {context.run.run_id[:8]} ({context.asset_key.to_user_string()} of "
            f"{context.partition_key})"
        )
        try:
            with store.round_chain(what):
                return compute(context, *args, **kwargs)
        except ChainBusy as exc:
            raise dg.Failure(str(exc)) from exc

    return wrapper
