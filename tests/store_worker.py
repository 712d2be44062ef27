"""A separate process working on a store, for the tests of writers racing on Postgres:
`python store_worker.py <mode> <url> <home> [args]`."""

from __future__ import annotations

import os
import sys
import time

import polars as pl

from resources.store import DuckDBStore


def main(mode: str, url: str, home: str, *args: str) -> None:
    os.environ["AUF_HOME"] = home
    store = DuckDBStore(url=url)
    if mode == "hold-chain":  # hold the chain lock until killed
        with store.round_chain(args[0]):
            print("holding", flush=True)
            time.sleep(600)
    elif mode == "take-prompts":  # take prompts for rounds start, start+step, ...
        start, step, count = (int(a) for a in args)
        for index in range(start, start + step * count, step):
            store.take_round_prompts(f"round-{index:04d}", index, 3)
        print("done", flush=True)
    elif mode == "half-write":  # write a round's pairs and die before the commit
        with store._transaction() as con:
            rows = pl.DataFrame(
                {
                    "pair_id": [f"k{i}" for i in range(500)],
                    "round_id": "round-0009",
                    "prompt_id": "p",
                    "completion_a": "a",
                    "completion_b": "b",
                    "method": "random",
                }
            )
            con.execute("DELETE FROM pairs WHERE round_id = ?", ["round-0009"])
            from resources.store.base import insert_rows

            insert_rows(con, "pairs", rows)
            print("inside", flush=True)
            time.sleep(600)


if __name__ == "__main__":
    main(*sys.argv[1:])
