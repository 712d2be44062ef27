"""The store on both backends (the DuckDB file and a real Postgres): idempotent partition
writes and feature storage."""

from __future__ import annotations

import os
import time
from datetime import datetime

import duckdb
import numpy as np
import polars as pl
import psycopg
import pytest

from resources.store import DuckDBStore, StoreError, utcnow
from resources.store import schema as store_schema


@pytest.fixture()
def store(tmp_path, store_url) -> DuckDBStore:
    return DuckDBStore(path=str(tmp_path / "db.duckdb"), url=store_url)


@pytest.fixture()
def duckdb_store(tmp_path) -> DuckDBStore:
    return DuckDBStore(path=str(tmp_path / "db.duckdb"))


def _pairs(round_id: str, n: int, tag: str = "x") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "pair_id": [f"{round_id}-{i}" for i in range(n)],
            "round_id": round_id,
            "prompt_id": [f"p{i}" for i in range(n)],
            "completion_a": [f"a{i}{tag}" for i in range(n)],
            "completion_b": [f"b{i}{tag}" for i in range(n)],
            "method": "random",
        }
    )


def test_replacing_a_partition_leaves_no_duplicates(store):
    store.replace_round("pairs", "round-0001", _pairs("round-0001", 3))
    store.replace_round("pairs", "round-0002", _pairs("round-0002", 2))
    store.replace_round("pairs", "round-0001", _pairs("round-0001", 3, tag="y"))
    store.replace_round("pairs", "round-0001", _pairs("round-0001", 3, tag="y"))
    assert store.count_rows("pairs", "round-0001") == 3
    assert store.count_rows("pairs", "round-0002") == 2
    assert set(store.round_rows("pairs", "round-0001")["completion_a"]) == {"a0y", "a1y", "a2y"}


def test_failed_replacement_keeps_the_previous_rows(store):
    store.replace_round("pairs", "round-0001", _pairs("round-0001", 2))
    bad = _pairs("round-0001", 2).with_columns(pl.lit(None, dtype=pl.String).alias("method"))
    with pytest.raises(Exception, match="NOT NULL|null"):
        store.replace_round("pairs", "round-0001", bad)
    assert store.round_rows("pairs", "round-0001")["method"].to_list() == ["random", "random"]


def test_rows_of_another_round_are_refused(store):
    with pytest.raises(StoreError, match="other round ids"):
        store.replace_round("pairs", "round-0001", _pairs("round-0002", 1))
    with pytest.raises(StoreError, match="not a per-round table"):
        store.replace_round("prompts", "round-0001", _pairs("round-0001", 1))


def test_prompts_are_added_once_and_conflicts_reported(store):
    first = pl.DataFrame({"prompt_id": ["a", "b"], "prompt": ["x", "y"], "source": "s"})
    assert store.add_prompts(first, "f1") == {"new": 2, "known": 0, "conflicting": 0}
    again = pl.DataFrame({"prompt_id": ["a", "c"], "prompt": ["changed", "z"], "source": "s"})
    assert store.add_prompts(again, "f2") == {"new": 1, "known": 0, "conflicting": 1}
    stored = store.sql_for_tests("SELECT prompt_id, prompt FROM prompts ORDER BY prompt_id")
    assert stored.rows() == [("a", "x"), ("b", "y"), ("c", "z")]


def _prompts(store, n: int) -> None:
    ids = [f"p{i:02d}" for i in range(n)]
    store.add_prompts(pl.DataFrame({"prompt_id": ids, "prompt": ids, "source": "s"}), "f")


def test_a_round_takes_unused_prompts_once_and_keeps_them(store):
    _prompts(store, 6)
    first = store.take_round_prompts("round-0001", 1, 2)
    second = store.take_round_prompts("round-0002", 2, 2, shuffle=True, seed=3)
    assert not first.kept and first.prompts["prompt_id"].to_list() == ["p00", "p01"]
    assert set(second.prompts["prompt_id"]).isdisjoint(first.prompts["prompt_id"])
    # Re-running a round after later rounds exist gives the round's own prompts, even shuffled.
    again = store.take_round_prompts("round-0002", 2, 4, shuffle=True, seed=99)
    assert again.kept and again.prompts.equals(second.prompts)
    assert again.left == 2


def test_the_database_refuses_a_prompt_in_two_rounds(store):
    _prompts(store, 2)
    store.take_round_prompts("round-0001", 1, 1)
    rows = pl.DataFrame({"round_id": "round-0002", "prompt_id": ["p00"], "position": [0]})
    with pytest.raises((duckdb.ConstraintException, psycopg.errors.UniqueViolation)):
        store.replace_round("round_prompts", "round-0002", rows.cast({"position": pl.Int32}))


def test_retake_is_refused_once_a_later_round_built_on_the_round(store):
    _prompts(store, 6)
    store.take_round_prompts("round-0001", 1, 2)
    redrawn = store.take_round_prompts("round-0001", 1, 3, retake=True)
    assert not redrawn.kept and redrawn.prompts.height == 3
    store.take_round_prompts("round-0002", 2, 2)
    with pytest.raises(StoreError, match="round-0002 already built on it"):
        store.take_round_prompts("round-0001", 1, 2, retake=True)
    assert store.prompts_of_round("round-0001").height == 3  # nothing was lost


def test_rounds_are_ordered_by_index_not_by_name(store):
    _prompts(store, 4)
    store.take_round_prompts("round-9999", 9999, 1)
    store.take_round_prompts("round-10000", 10000, 1)
    assert store.previous_round(10000) == "round-9999"
    assert store.previous_round(9999) is None
    assert store.rounds()["round_id"].to_list() == ["round-9999", "round-10000"]


def test_schema_runs_once_per_file_version(store, monkeypatch):
    store.count_rows("prompts")  # creates the file and its tables
    calls = []
    real = store_schema.add_unique_round_prompts
    monkeypatch.setattr(store_schema, "add_unique_round_prompts", lambda con: calls.append(1))
    store.count_rows("prompts")
    assert calls == []  # up to date: the schema is not run again
    monkeypatch.setattr(store_schema, "SCHEMA_VERSION", store_schema.SCHEMA_VERSION + 1)
    monkeypatch.setattr(store_schema, "add_unique_round_prompts", real)
    store.count_rows("prompts")
    version = store.sql_for_tests("SELECT max(version) FROM auf_schema").item()
    assert version == store_schema.SCHEMA_VERSION


def test_an_older_file_is_migrated_forward_and_keeps_its_rows(duckdb_store):
    """A file from before the human-labelling columns and the lineage columns (schema 4, with
    the bounds still required) gains them on its next connection, its rows kept."""
    store = duckdb_store
    con = duckdb.connect(str(store.database))
    con.execute(
        "CREATE TABLE judgements (pair_id VARCHAR PRIMARY KEY, round_id VARCHAR NOT NULL, "
        "prompt_id VARCHAR NOT NULL, score_a DOUBLE, score_b DOUBLE, preference VARCHAR NOT NULL, "
        "chosen_completion_id VARCHAR, rejected_completion_id VARCHAR, labeller VARCHAR NOT NULL, "
        "labelled_at TIMESTAMP)"
    )
    con.execute(
        "CREATE TABLE reward_scores (round_id VARCHAR NOT NULL, completion_id VARCHAR PRIMARY "
        "KEY, prompt_id VARCHAR NOT NULL, reward_model_round VARCHAR, mu DOUBLE NOT NULL, "
        "sigma DOUBLE NOT NULL, lower DOUBLE NOT NULL, upper DOUBLE NOT NULL, beta DOUBLE NOT NULL)"
    )
    con.execute(
        "INSERT INTO judgements VALUES ('q1', 'round-0001', 'p1', 1, 0, 'a', 'c1', 'c2', "
        "'judge', NULL)"
    )
    con.execute("CREATE TABLE auf_schema (version INTEGER, applied_at TIMESTAMP)")
    con.execute("INSERT INTO auf_schema VALUES (4, ?)", [utcnow()])
    con.close()
    assert store.count_rows("judgements") == 1
    verdict = store.round_rows("judgements", "round-0001").row(0, named=True)
    assert verdict["preference"] == "a" and verdict["source"] is None and "votes" in verdict
    assert verdict["confidence"] is None  # a verdict from before confidence was kept has none
    store.replace_round(
        "reward_scores",
        "round-0001",
        pl.DataFrame(
            {
                "round_id": ["round-0001"],
                "completion_id": ["c1"],
                "prompt_id": ["p1"],
                "mu": [0.5],
                "sigma": [0.1],
            }
        ),
    )  # the bounds are optional now
    assert store.count_rows("reward_scores", "round-0001") == 1
    assert store.sql_for_tests("SELECT max(version) FROM auf_schema").item() == (
        store_schema.SCHEMA_VERSION
    )


def test_orphan_files_are_removed_and_referenced_or_young_ones_kept(store, tmp_path):
    store.add_features(["c0"], "enc", np.ones((1, 3), dtype=np.float32))
    folder = store.root / "features" / "enc"
    kept = next(folder.glob("*.npy"))
    orphan = folder / ("ab" * 16 + ".npy")
    young = folder / ("cd" * 16 + ".npy")
    stray = folder / "notes.npy"  # not a name the pipeline writes: never touched
    for path in (orphan, young, stray):
        np.save(path, np.zeros(2))
    old = time.time() - 7200
    for path in (orphan, stray, kept):
        os.utime(path, (old, old))
    assert store.remove_orphan_files([store.root / "features"]) == 1
    assert kept.exists() and young.exists() and stray.exists() and not orphan.exists()
    assert store.load_features(["c0"], "enc").shape == (1, 3)


def test_paths_are_stored_relative_to_the_home(store, tmp_path):
    inside = store.root / "reward_models" / "round-0001.abc.safetensors"
    assert store.relative(inside) == "reward_models/round-0001.abc.safetensors"
    assert store.resolve("reward_models/x") == store.root / "reward_models" / "x"
    outside = tmp_path.parent / "elsewhere" / "m.safetensors"
    assert store.relative(outside) == str(outside.resolve())


def test_features_round_trip_in_request_order(store):
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.add_features(["c0", "c1", "c2", "c3"], "enc", vectors)
    store.add_features(["c4"], "enc", np.full((1, 3), 7.0, dtype=np.float32))
    assert store.missing_features(["c1", "c4", "c9"], "enc") == ["c9"]
    assert store.missing_features(["c1"], "other-encoder") == ["c1"]
    got = store.load_features(["c4", "c2", "c0"], "enc")
    np.testing.assert_array_equal(got, np.stack([np.full(3, 7.0), vectors[2], vectors[0]]))
    with pytest.raises(StoreError, match="no enc features"):
        store.load_features(["c0", "nope"], "enc")


def _small_round(store) -> None:
    """round-0001 over p00, p01 (p02, p03 left unused): three responses to p00, two to p01,
    the p00 pair decided for "a", the p01 pair failed, and p00's pair shown swapped."""
    _prompts(store, 4)
    store.take_round_prompts("round-0001", 1, 2)
    rid = "round-0001"
    completions = pl.DataFrame(
        {
            "completion_id": ["c3", "c1", "c2", "c4", "c5"],
            "round_id": rid,
            "prompt_id": ["p00", "p00", "p00", "p01", "p01"],
            "member": ["a", "m0", "m1", "m0", "m1"],  # c3 first by member
            "model": "m",
            "response": ["r3", "r1", " ", "r4", "r5"],
        }
    )
    pairs = pl.DataFrame(
        {
            "pair_id": ["q0", "q1"],
            "round_id": rid,
            "prompt_id": ["p00", "p01"],
            "completion_a": ["c1", "c4"],
            "completion_b": ["c3", "c5"],
            "method": ["deltaucb", "deltaucb"],
            "fallback": ["random", "random"],
        }
    )
    verdicts = pl.DataFrame(
        {
            "pair_id": ["q0", "q1"],
            "round_id": rid,
            "prompt_id": ["p00", "p01"],
            "score_a": [1.0, None],
            "score_b": [0.0, None],
            "preference": ["a", "failed"],
            "labeller": "judge",
            "confidence": [0.8, None],
        }
    )
    scores = pl.DataFrame(
        {
            "round_id": rid,
            "completion_id": ["c1", "c2", "c3", "c4", "c5"],
            "prompt_id": ["p00", "p00", "p00", "p01", "p01"],
            "mu": [0.1, 0.2, float("nan"), 0.4, 0.5],
            "sigma": 0.1,
            "reward_model_path": "reward_models/round-0000.safetensors",
        }
    )
    store.replace_round_tables(
        rid,
        {
            "completions": completions,
            "pairs": pairs,
            "judgements": verdicts,
            "reward_scores": scores,
        },
    )
    store.add_features(["c1", "c2", "c3", "c4", "c5"], "enc", np.ones((5, 3), dtype=np.float32))
    store.add_presentations(
        pl.DataFrame(
            {
                "pair_id": ["q0"],
                "round_id": rid,
                "shown_as_a": ["c3"],
                "shown_as_b": ["c1"],
                "swapped": [True],
            }
        )
    )


def test_the_round_reads_the_assets_and_checks_use(store):
    _small_round(store)
    rid = "round-0001"
    assert store.completion_ids_of_round(rid) == ["c1", "c2", "c3", "c4", "c5"]
    by_member = store.completions_of_round(rid)["completion_id"].to_list()
    assert by_member == ["c3", "c1", "c2", "c4", "c5"]
    assert store.completion_texts(["c4", "c9"], [rid]).rows() == [("c4", "p01", "r4")]
    assert store.completion_texts(["c4"], ["round-0002"]).height == 0
    assert store.round_completion_texts(rid)["response"].to_list() == ["r1", " ", "r3", "r4", "r5"]
    assert store.responses_to_prompts(["p01"])["completion_id"].to_list() == ["c4", "c5"]
    assert store.held_out_prompts(["p00"])["prompt_id"].to_list() == ["p00", "p02", "p03"]
    assert store.feature_dim(rid, "enc") == 3 and store.feature_dim(rid, "other") is None
    assert store.completion_counts(rid) == {
        "prompts": 2,
        "members": 3,
        "responses": 5,
        "empty": 1,
        "from_pool": 0,
        "short_prompts": 0,
    }
    assert store.reward_score_counts(rid) == {"scored": 5, "bad": 1, "responses": 5}
    assert store.pair_counts(rid) == {
        "pairs": 2,
        "prompts_with_pairs": 2,
        "prompts": 2,
        "same_response": 0,
        "method": "deltaucb",
        "fallback": "random",
        "foreign_response": 0,
    }
    assert store.judgement_counts(rid) == {
        "pairs": 2,
        "verdicts": 2,
        "unscored": 0,
        "without_labels": 0,
        "failed": 1,
        "unlabelled": 0,
    }
    assert store.judgements_per_round().rows() == [(rid, 2)]
    stored = store.round_rows("judgements", rid).sort("pair_id")
    assert stored["confidence"].to_list() == [0.8, None]  # the judge's confidence, kept
    assert store.score_checkpoints() == {rid: ["reward_models/round-0000.safetensors"]}
    texts = store.pairs_with_texts(rid)
    assert texts.select("pair_id", "prompt", "response_a", "response_b").rows() == [
        ("q0", "p00", "r1", "r3"),
        ("q1", "p01", "r4", "r5"),
    ]
    assert store.presentation_swaps(rid).rows() == [("q0", True)]
    assert store.rounds_labelled_by_people() == set()
    assert store.reward_model_records() == {}
    overview = store.round_overview().row(0, named=True)
    assert (overview["prompts"], overview["pairs"], overview["decided"]) == (2, 2, 1)
    assert overview["pairs_trained"] is None  # no reward model yet
    store.replace_round(
        "reward_models",
        rid,
        pl.DataFrame(
            {
                "round_id": [rid],
                "path": ["m.safetensors"],
                "encoder": ["enc"],
                "pairs_trained": [1],
                "prompts_done": [2],
                "base_round": [None],
            }
        ),
    )
    assert store.reward_model_records()[rid]["pairs_trained"] == 1
    assert store.round_overview().row(0, named=True)["pairs_trained"] == 1


def test_a_screening_limits_what_counts_as_sent_to_people(store):
    _small_round(store)
    rid = "round-0001"
    store.replace_round(
        "annotation_batches",
        rid,
        pl.DataFrame({"round_id": [rid], "pairs": [1], "written_at": [datetime(2026, 1, 1)]}),
    )
    assert store.label_progress()["pairs"].to_list() == [2]  # people label every pair
    screening = store.round_rows("judgements", rid).with_columns(
        route=pl.Series(["unsure", ""]), source=pl.lit("llm_judge")
    )
    store.replace_round("judge_screening", rid, screening)
    assert store.label_progress()["pairs"].to_list() == [1]  # q1 stays with the judge
    read = store.screening_of_rounds([rid])
    assert read.select("pair_id", "route", "completion_a", "model_b").rows() == [
        ("q0", "unsure", "c1", "m"),
        ("q1", "", "c4", "m"),
    ]
    assert store.screening_of_rounds().height == 2
    assert store.screening_of_rounds(["round-0002"]).height == 0
