"""The registry of selection methods: lookups, families and needs, and a method added at run time
that the simulator, a round's `selected_pairs` and `auf methods` all pick up."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_simulation import config, linear_features, pool_frame

from auf_assets.core.acquisition import rule_select
from auf_assets.core.methods import (
    FAMILIES,
    NEEDS,
    ROUND_FAMILIES,
    get_method,
    method_names,
    methods,
    register_method,
    unregister_method,
)
from auf_assets.core.simulation import simulate, validate_pool


def _widest(mu, sigma, valid, beta, rng):
    """The toy rule: the two responses the model is least sure about (largest sigma)."""
    order = np.argsort(np.where(valid, -sigma, np.inf), axis=1, kind="stable")
    return order[:, :2]


@pytest.fixture()
def widest():
    """`widest` registered for one test, with every call's sigma, mask and picks recorded."""
    calls = []
    checked = rule_select("widest", _widest)

    def select(mu, sigma, **kwargs):
        picks = checked(mu, sigma, **kwargs)
        calls.append((np.asarray(sigma), kwargs["mask"], picks))
        return picks

    method = register_method(
        "widest",
        family="reward_model",
        needs=["scores"],
        select=select,
        description="the two responses with the largest sigma",
        stochastic=False,
    )
    yield method, calls
    unregister_method("widest")
    assert "widest" not in method_names()


def _widest_pairs(sigma: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return _widest(None, sigma, mask, None, None)


def test_an_unknown_name_fails_and_lists_every_valid_name():
    with pytest.raises(ValueError, match="unknown selection method 'nope'; known: random, ") as e:
        get_method("nope")
    assert all(name in str(e.value) for name in method_names())
    with pytest.raises(ValueError, match="unknown selection method None"):
        get_method(None)


def test_a_round_refuses_the_oracle_baselines_and_says_what_they_are():
    with pytest.raises(ValueError, match="maxmin is an oracle method") as e:
        get_method("maxmin", families=ROUND_FAMILIES)
    listed = str(e.value).split("here: ")[1].split(", ")
    assert listed == method_names("reward_model") + method_names("policy")
    assert get_method("sharp", families=ROUND_FAMILIES).family == "policy"


def test_families_and_needs():
    everything = methods()
    assert [m.name for m in everything] == method_names()
    assert sum(len(methods(f)) for f in FAMILIES) == len(everything)
    for m in everything:
        assert m.family in FAMILIES and set(m.needs) <= set(NEEDS)
        assert m.description.strip() and "\n" not in m.description
    assert get_method("random").needs == ()
    assert get_method("deltaucb").needs == ("scores",)
    assert get_method("activedpo").needs == ("log_probs", "gradients")
    assert get_method("delta_model").needs == ("oracle", "model_names")
    assert not get_method("deltaucb").stochastic and get_method("drts").stochastic
    assert [get_method(n).labels_per_prompt for n in method_names("oracle")] == ["2", "4", "N", "0"]
    with pytest.raises(ValueError, match="unknown family 'people'"):
        methods("people")


def test_register_method_checks_what_it_is_given(widest):
    good = {"family": "reward_model", "needs": ["scores"], "select": _widest, "description": "x"}
    with pytest.raises(ValueError, match="exists already"):
        register_method("widest", **good)
    with pytest.raises(ValueError, match="exists already"):
        register_method("deltaucb", **good)
    with pytest.raises(ValueError, match="family 'judge' is not one of reward_model"):
        register_method("other", **{**good, "family": "judge"})
    with pytest.raises(ValueError, match=r"unknown needs \['labels'\]"):
        register_method("other", **{**good, "needs": ["labels"]})
    with pytest.raises(ValueError, match="one non-empty line"):
        register_method("other", **{**good, "description": "two\nlines"})
    with pytest.raises(ValueError, match="lower-case letters"):
        register_method("sharp:random", **good)
    with pytest.raises(ValueError, match="callable"):
        register_method("other", **{**good, "select": "widest"})
    with pytest.raises(ValueError, match="built-in"):
        unregister_method("random")
    assert "other" not in method_names()
    replaced = register_method("widest", **{**good, "description": "again"}, replace=True)
    assert get_method("widest") is replaced


def test_a_registered_method_runs_in_the_simulator(widest):
    method, calls = widest
    assert method.name in method_names("reward_model")
    pool = validate_pool(pool_frame(20, 5))
    cfg = config("widest", max_rounds=2)
    assert cfg.is_active and not cfg.is_policy_aware
    result = simulate(pool, linear_features(pool), cfg)
    assert len(calls) == 2  # one selection per round, through the registry
    assert set(result.pairs["method"]) == {"widest"}
    # The pairs are the ones the rule picked from the running model's sigma, in every round.
    ids = pool.frame["completion_id"].to_list()
    for round_no, (sigma, mask, picks) in enumerate(calls, start=1):
        np.testing.assert_array_equal(picks, _widest_pairs(sigma, mask))
        rows = result.pairs.filter(pl.col("round") == round_no)  # the round's prompts, in order
        assert rows.height == len(picks)
        for (pid, c, r), (i, j) in zip(
            rows.select("prompt_id", "chosen_completion_id", "rejected_completion_id").rows(),
            picks,
            strict=True,
        ):
            cols = pool.index[pool.prompt_ids.index(pid)]
            assert {c, r} == {ids[cols[i]], ids[cols[j]]}


def test_a_registered_method_picks_a_rounds_pairs_and_is_listed(widest, auf_home, capsys):
    import dagster as dg

    from auf_assets.cli import main
    from auf_assets.round import selected_pairs
    from resources.store import DuckDBStore

    method, calls = widest
    store = DuckDBStore()
    rng = np.random.default_rng(3)
    scores = pl.DataFrame(
        {
            "round_id": "round-0001",
            "completion_id": [f"q{p}-c{n}" for p in range(3) for n in range(4)],
            "prompt_id": [f"q{p}" for p in range(3) for n in range(4)],
            "mu": rng.normal(size=12),
            "sigma": rng.uniform(0.1, 1.0, size=12),
        }
    )
    store.replace_round("reward_scores", "round-0001", scores)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    result = dg.materialize(
        [selected_pairs],
        instance=instance,
        partition_key="round-0001",
        resources={"store": store},
        run_config={"ops": {"selected_pairs": {"config": {"method": "widest"}}}},
    )
    assert result.success and len(calls) == 1
    pairs = store.round_rows("pairs", "round-0001").sort("prompt_id")
    assert set(pairs["method"]) == {"widest"} and pairs["fallback"].is_null().all()
    widest_two = (
        scores.sort("sigma", descending=True).group_by("prompt_id", maintain_order=True).head(2)
    )
    for pid, a, b in pairs.select("prompt_id", "completion_a", "completion_b").rows():
        assert {a, b} == set(widest_two.filter(pl.col("prompt_id") == pid)["completion_id"])

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "widest" in out and "the two responses with the largest sigma [needs scores]" in out
    for name in method_names():
        assert f"  {name} " in out


def test_the_round_refuses_an_oracle_baseline_before_reading_anything(auf_home):
    import dagster as dg

    from auf_assets.round import selected_pairs
    from resources.store import DuckDBStore

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    result = dg.materialize(
        [selected_pairs],
        instance=instance,
        partition_key="round-0001",
        resources={"store": DuckDBStore()},
        run_config={"ops": {"selected_pairs": {"config": {"method": "maxmin"}}}},
        raise_on_error=False,
    )
    assert not result.success
    # The config check names it (the method is checked when the op's config is built).
    error = result.get_step_failure_events()[0].event_specific_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    failure = "\n".join(messages)
    assert "maxmin is an oracle method" in failure and "deltaucb" in failure


def test_an_old_homes_random_suffix_becomes_the_fallback_field(tmp_path):
    """Homes written before the field stored the fallback as `method:random`; opening one with
    this version splits it off (schema version 5 -> 6)."""
    import duckdb

    from resources.store import DuckDBStore

    path = tmp_path / "old.duckdb"
    store = DuckDBStore(path=str(path))
    store.count_rows("pairs")  # creates the tables
    with duckdb.connect(str(path)) as con:  # rewind the file to what version 5 wrote
        con.execute("ALTER TABLE pairs DROP COLUMN fallback")
        con.execute("DELETE FROM auf_schema")
        con.execute("INSERT INTO auf_schema VALUES (5, now())")
        con.execute(
            "INSERT INTO pairs (pair_id, round_id, prompt_id, completion_a, completion_b, method) "
            "VALUES ('p1', 'round-0001', 'q1', 'a', 'b', 'sharp:random'), "
            "('p2', 'round-0002', 'q2', 'a', 'b', 'sharp'), "
            "('p3', 'round-0002', 'q3', 'a', 'b', 'deltaucb')"
        )
    rows = store.sql_for_tests(
        "SELECT pair_id, method, fallback FROM pairs ORDER BY pair_id"
    ).rows()
    assert rows == [("p1", "sharp", "random"), ("p2", "sharp", None), ("p3", "deltaucb", None)]
    from resources.store.schema import SCHEMA_VERSION

    # Migrated forward to this code's version (6 added the field).
    assert store.sql_for_tests("SELECT max(version) AS v FROM auf_schema")["v"].item() == (
        SCHEMA_VERSION
    )
