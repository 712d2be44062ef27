"""A separate process working on a store, for the tests of writers racing on Postgres:
`python store_worker.py <mode> <url> <home> [args]`."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import polars as pl

from resources.store import DuckDBStore


def pairs_of(round_id: str, count: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "pair_id": [f"{round_id}-pair{i:04d}" for i in range(count)],
            "round_id": round_id,
            "prompt_id": "p",
            "completion_a": "a",
            "completion_b": "b",
            "method": "random",
        }
    )


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
    elif mode == "round-step":  # as a round step: hold the chain, rewrite a round's pairs
        round_id, count = args[0], int(args[1])
        stop = Path(home) / "stop-round-step"
        writes = 0
        with store.round_chain(f"round step of {round_id}"):
            print("holding", flush=True)
            while writes < 3 or not stop.exists():
                store.replace_round_tables(round_id, {"pairs": pairs_of(round_id, count)})
                writes += 1
        print(f"done {writes}", flush=True)
    elif mode == "sensor":  # evaluate the sensors (people labelling) a few times
        import dagster as dg

        from resources.labelling import LabellingSettings
        from sensors.rounds import labels_landed, next_round

        labelling = LabellingSettings(source="people", settle_seconds=0)
        instance = dg.DagsterInstance.ephemeral()
        cursor = None
        for _ in range(int(args[0])):
            resources = {"store": store, "labelling": labelling}
            with dg.build_sensor_context(instance, cursor=cursor, resources=resources) as ctx:
                cursor = getattr(labels_landed(ctx), "cursor", None) or cursor
            with dg.build_sensor_context(instance, resources=resources) as ctx:
                next_round(ctx)
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
