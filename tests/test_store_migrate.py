"""`auf store migrate`: a DuckDB home's tables moved to Postgres, checked by per-table hashes,
the file left untouched, and the round chain continued on Postgres."""

from __future__ import annotations

import hashlib
import shutil

import dagster as dg
import polars as pl
from test_round import materialize_round

from auf_assets.cli import main as cli_main
from resources.store import DuckDBStore, utcnow
from resources.store.migrate import content_hash


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _label_and_release(store: DuckDBStore) -> None:
    pair = store.pairs_with_texts("round-0001").row(0, named=True)
    now = utcnow()
    label = {
        "label_id": "l1",
        "pair_id": pair["pair_id"],
        "round_id": "round-0001",
        "source": "people",
        "labeller": "annotator:ann",
        "annotator": "ann",
        "raw_choice": "A",
        "shown_as_a": pair["completion_a"],
        "choice": "a",
        "file": "batch.jsonl",
        "file_sha256": "f" * 64,
        "line": 1,
        "location": "line 1",
        "labelled_at": now,
        "imported_at": now,
    }
    file_row = {"file_sha256": "f" * 64, "file": "batch.jsonl", "imported_at": now}
    assert store.record_label_file(file_row, pl.DataFrame([label])) == 1
    store.record_release(
        {
            "version": "v1",
            "path": "datasets/v1",
            "rounds": "round-0001,round-0002",
            "manifest_sha256": "m" * 64,
            "pairs": 8,
            "built_at": now,
        }
    )


def test_a_home_moves_to_postgres_and_the_chain_continues(
    rounds_home, tmp_path, postgres_url, monkeypatch, capsys, tiny_lm_dir
):
    home = tmp_path / "home"
    shutil.copytree(rounds_home, home)
    monkeypatch.setenv("AUF_HOME", str(home))
    monkeypatch.delenv("AUF_STORE_URL", raising=False)
    duck = DuckDBStore()
    _label_and_release(duck)
    before = _sha(duck.database)

    assert cli_main(["store", "migrate", "--to", postgres_url]) == 0
    assert _sha(duck.database) == before  # the file is left as it was
    pg = DuckDBStore(url=postgres_url)
    tables = duck.sql_for_tests(
        "SELECT table_name FROM duckdb_tables() WHERE table_name <> 'auf_schema'"
    )["table_name"]
    for table in tables:
        mine = duck.sql_for_tests(f"SELECT * FROM {table}")
        theirs = pg.sql_for_tests(f"SELECT * FROM {table}").select(mine.columns)
        assert content_hash(theirs) == content_hash(mine), table
    assert pg.count_rows("labels") == 1 and pg.latest_release()["version"] == "v1"
    out = capsys.readouterr().out
    assert "copied" in out and "left as it was" in out

    # A second migration into the same database is refused: it already holds a chain.
    assert cli_main(["store", "migrate", "--to", postgres_url]) == 1
    assert "already holds a round chain" in capsys.readouterr().out

    # The next round continues the chain on Postgres.
    monkeypatch.setenv("AUF_STORE_URL", postgres_url)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["round-0001", "round-0002"])
    assert materialize_round(instance, "round-0003", tiny_lm_dir).success
    assert pg.reward_model_record("round-0003")["base_round"] == "round-0002"
    assert pg.shared_round_prompts().height == 0
    assert _sha(duck.database) == before
