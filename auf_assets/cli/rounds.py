"""`auf rounds`: the chain of rounds in this home, in order, and which of them are stale."""

from __future__ import annotations

import argparse

from auf_assets.cli.common import prepare_home


def _rounds(args: argparse.Namespace) -> int:
    root = prepare_home()
    from auf_assets.round_chain import chain_report
    from resources import chain_lock
    from resources.store import DuckDBStore

    store = DuckDBStore()
    if not store.database.exists():
        print(f"no rounds yet: {store.database} does not exist (run `auf demo`)")
        return 0
    rows = store.round_overview()
    links = {link.round_id: link for link in chain_report(store)}
    print(f"home: {root}")
    if rows.height == 0:
        print("no rounds yet")
    for row in rows.iter_rows(named=True):
        link = links.get(row["round_id"])
        if row["pairs_trained"] is None:
            state = "not finished (no reward model)"
        else:
            base = row["base_round"] or "fresh heads"
            state = f"reward model from {base}, {row['pairs_trained']} replay pairs"
        flag = f"  STALE: {link.why}" if link and link.stale else ""
        print(
            f"  {row['round_id']}: {row['prompts']} prompts, {row['pairs']} pairs, "
            f"{row['decided']} decided; {state}{flag}"
        )
    stale = [rid for rid, link in links.items() if link.stale]
    if stale:
        print(f"stale rounds, to re-run oldest first: {', '.join(stale)}")
        print(
            "  (launch each one's active_round job in the UI; for a round people labelled, its "
            "labelled_round job: it retrains on the labels, which are kept)"
        )
    if (root / chain_lock.LOCK_NAME).exists():
        holder = chain_lock.holder(root)
        try:
            with chain_lock.round_chain(root, "auf rounds"):
                pass
        except chain_lock.ChainBusy:
            print(f"working now: {holder.get('what')} (pid {holder.get('pid')})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    rounds = sub.add_parser(
        "rounds", help="list the rounds of this home in order, and which are stale"
    )
    rounds.set_defaults(func=_rounds)
