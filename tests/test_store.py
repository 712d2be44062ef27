"""The DuckDB store: idempotent partition writes and feature storage."""

from __future__ import annotations

import os
import time

import duckdb
import numpy as np
import polars as pl
import pytest

from resources import store as store_module
from resources.store import DuckDBStore, StoreError


@pytest.fixture()
def store(tmp_path) -> DuckDBStore:
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
    stored = store.query("SELECT prompt_id, prompt FROM prompts ORDER BY prompt_id")
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
    with pytest.raises(duckdb.ConstraintException):
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
    real = store_module._add_unique_round_prompts
    monkeypatch.setattr(store_module, "_add_unique_round_prompts", lambda con: calls.append(1))
    store.count_rows("prompts")
    assert calls == []  # up to date: the schema is not run again
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", store_module.SCHEMA_VERSION + 1)
    monkeypatch.setattr(store_module, "_add_unique_round_prompts", real)
    store.count_rows("prompts")
    assert store.scalar("SELECT max(version) FROM auf_schema") == store_module.SCHEMA_VERSION


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
