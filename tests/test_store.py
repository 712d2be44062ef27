"""The DuckDB store: idempotent partition writes and feature storage."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

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


def test_available_prompts_exclude_other_rounds_only(store):
    store.add_prompts(
        pl.DataFrame({"prompt_id": ["a", "b", "c"], "prompt": ["1", "2", "3"], "source": "s"}),
        "f",
    )
    rows = pl.DataFrame({"round_id": "round-0001", "prompt_id": ["a"], "position": [0]})
    store.replace_round("round_prompts", "round-0001", rows.cast({"position": pl.Int32}))
    assert set(store.available_prompts("round-0002")["prompt_id"]) == {"b", "c"}
    assert set(store.available_prompts("round-0001")["prompt_id"]) == {"a", "b", "c"}


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
