"""The store on a real Postgres: the backend chosen by one setting, a whole round and a label
import through Dagster, and the errors a user meets (wrong URL, server down, a password where
it does not belong, a schema from a newer version of the code)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import dagster as dg
import pytest
from postgres_tools import with_database
from test_labelling import drop, labelled, people, select_pairs_for, train_on_labels
from test_round import materialize_round

from auf_assets.label_inbox import scan_inbox
from auf_assets.prompts import prompt_pool
from resources.store import DuckDBStore, StoreError, schema
from resources.store.postgres import PostgresUnavailable, redact


def test_the_backend_is_chosen_by_one_setting(tmp_path, postgres_url, monkeypatch):
    monkeypatch.setenv("AUF_HOME", str(tmp_path))
    monkeypatch.delenv("AUF_STORE_URL", raising=False)
    assert DuckDBStore().backend == "duckdb"
    monkeypatch.setenv("AUF_STORE_URL", postgres_url)
    store = DuckDBStore()
    assert store.backend == "postgres" and store.root == tmp_path
    assert store.count_rows("prompts") == 0
    assert not (tmp_path / "auf.duckdb").exists()  # the tables live on the server
    assert DuckDBStore(url=postgres_url).backend == "postgres"


def test_a_schema_from_a_newer_version_is_refused(tmp_path, store_url, monkeypatch):
    store = DuckDBStore(path=str(tmp_path / "db.duckdb"), url=store_url)
    store.count_rows("prompts")
    monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION - 1)
    fresh = DuckDBStore(path=str(tmp_path / "db.duckdb"), url=store_url)
    with pytest.raises(StoreError, match="newer version of this code"):
        fresh.count_rows("prompts")


def test_a_password_in_the_config_is_refused_and_never_shown(postgres_url):
    url = postgres_url.replace("postgres:@", "postgres:s3cret@")
    with pytest.raises(StoreError) as err:
        DuckDBStore(url=url).count_rows("prompts")
    assert "s3cret" not in str(err.value) and "PGPASSWORD" in str(err.value)
    assert redact("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"


def test_a_wrong_database_names_the_server_not_the_password(postgres_url, monkeypatch):
    url = with_database(postgres_url, "no_such_db").replace("postgres:@", "postgres:s3cret@")
    monkeypatch.setenv("AUF_STORE_URL", url)
    with pytest.raises(PostgresUnavailable) as err:
        DuckDBStore().count_rows("prompts")
    message = str(err.value)
    assert "no_such_db" in message and "cannot connect to the Postgres store" in message
    assert "s3cret" not in message


def test_a_server_that_is_down_is_named(tmp_path, monkeypatch):
    down = tmp_path / "no-server"
    down.mkdir()
    monkeypatch.setenv("AUF_STORE_URL", f"postgresql://auf:pw123456@/auf?host={down}")
    with pytest.raises(PostgresUnavailable) as err:
        DuckDBStore().count_rows("prompts")
    assert str(down) in str(err.value) and "pw123456" not in str(err.value)


def test_a_missing_password_file_is_named(postgres_url, monkeypatch, tmp_path):
    monkeypatch.setenv("AUF_STORE_URL", postgres_url)
    monkeypatch.setenv("AUF_STORE_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(PostgresUnavailable, match="AUF_STORE_PASSWORD_FILE"):
        DuckDBStore().count_rows("prompts")


def test_rounds_and_a_label_import_on_postgres(tmp_path, postgres_url, monkeypatch, tiny_lm_dir):
    """A people round (pairs, annotation batch, a label file imported, trained on), then a
    judged round through `materialize_round`: all on Postgres, no DuckDB file written."""
    monkeypatch.setenv("AUF_HOME", str(tmp_path))
    monkeypatch.setenv("AUF_STORE_URL", postgres_url)
    instance = dg.DagsterInstance.ephemeral()
    store = DuckDBStore()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": store}).success
    assert select_pairs_for(instance, "round-0001", tiny_lm_dir, people()).success
    labelling = people()  # a fresh one: Dagster binds the one it ran with
    batch = [
        json.loads(line)
        for line in (labelling.outbox_dir / "round-0001.jsonl").read_text().splitlines()
    ]
    env = SimpleNamespace(labelling=labelling)
    drop(env, "batch1.jsonl", labelled(batch, ["A", "B", "A", "tie"], "ann"))
    outcomes, _, _ = scan_inbox(store, labelling, None, now=1e12)
    assert [o.status for o in outcomes] == ["imported"] and outcomes[0].new_labels == 4
    assert train_on_labels(instance, "round-0001", tiny_lm_dir, labelling).success
    assert store.count_rows("labels", "round-0001") == 4
    assert store.reward_model_record("round-0001") is not None

    assert materialize_round(instance, "round-0002", tiny_lm_dir).success
    assert store.count_rows("judgements", "round-0002") == store.count_rows("pairs", "round-0002")
    assert store.shared_round_prompts().height == 0
    assert not (tmp_path / "auf.duckdb").exists()


def test_every_per_round_table_is_indexed_by_round_on_postgres(tmp_path, postgres_url, monkeypatch):
    monkeypatch.setenv("AUF_HOME", str(tmp_path))
    monkeypatch.setenv("AUF_STORE_URL", postgres_url)
    store = DuckDBStore()
    indexed = set(
        store.sql_for_tests("SELECT tablename FROM pg_indexes WHERE indexdef LIKE '%(round_id)'")[
            "tablename"
        ]
    )
    assert indexed >= {*schema.ROUND_TABLES, "labels"}
