"""One chain of rounds per home: no shared prompts, no fork, settings that take effect, and
lineage that says which rounds an earlier change made stale. Concurrency is tested with real
processes."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from test_round import materialize_round, tiny_resources, tiny_run_config

from auf_assets.cli.main import main as cli_main
from auf_assets.prompts import prompt_pool
from auf_assets.round import ROUND_ASSETS, reward_model, round_prompts
from resources import home as home_module
from resources.chain_lock import ChainBusy, round_chain
from resources.labelling import LabellingSettings
from resources.reward_model import UncertaintyModel
from resources.store import DuckDBStore
from sensors.rounds import next_round

REPO = Path(__file__).resolve().parents[1]


def _take(db: str, round_id: str, index: int, start, out) -> None:
    store = DuckDBStore(path=db)
    start.wait()
    taken = store.take_round_prompts(round_id, index, 5)
    out.put((round_id, taken.prompts["prompt_id"].to_list()))


@pytest.mark.process
def test_rounds_taking_prompts_at_the_same_time_never_share_one(tmp_path):
    db = str(tmp_path / "auf.duckdb")
    store = DuckDBStore(path=db)
    ids = [f"p{i:02d}" for i in range(20)]
    store.add_prompts(pl.DataFrame({"prompt_id": ids, "prompt": ids, "source": "s"}), "f")
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=_take, args=(db, f"round-000{i}", i, start, out)) for i in (1, 2, 3)
    ]
    for p in procs:
        p.start()
    taken = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    all_ids = [pid for batch in taken.values() for pid in batch]
    assert len(all_ids) == 15 and len(set(all_ids)) == 15
    assert store.shared_round_prompts().height == 0


HOLDER = """
import sys, time
from pathlib import Path
from resources.chain_lock import round_chain
with round_chain(Path(sys.argv[1]), "auf demo (--rounds 3)"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def chain_holder(auf_home):
    """Another process holding this home's round chain, as a running `auf demo` would."""
    auf_home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(auf_home)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_round_step_stops_while_another_process_holds_the_chain(auf_home, chain_holder):
    instance = dg.DagsterInstance.ephemeral()
    store = DuckDBStore()
    dg.materialize([prompt_pool], instance=instance, resources={"store": store})
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    with pytest.raises(dg.Failure, match=r"auf demo \(--rounds 3\) \(pid \d+"):
        dg.materialize(
            [round_prompts],
            instance=instance,
            partition_key="round-0001",
            resources={"store": store},
        )
    assert store.count_rows("round_prompts") == 0
    # The kernel frees the lock with its holder, however the holder ends.
    chain_holder.kill()
    chain_holder.wait()
    with round_chain(auf_home, "test"):
        pass


@pytest.mark.process
def test_a_second_auf_demo_stops_with_a_message(auf_home, chain_holder):
    proc = subprocess.run(
        [sys.executable, "-m", "auf_assets.cli", "demo", "--rounds", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "is working on the rounds of this home" in proc.stderr
    assert f"pid {chain_holder.pid}" in proc.stderr


@pytest.mark.process
def test_the_lock_is_reentrant_in_one_process_and_exclusive_across(auf_home):
    with round_chain(auf_home, "outer"), round_chain(auf_home, "inner"):
        code = (
            "import sys; from pathlib import Path; from resources.chain_lock import round_chain, "
            "ChainBusy\ntry:\n    with round_chain(Path(sys.argv[1]), 'x'): print('got')\n"
            "except ChainBusy as e: print('busy', e)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(auf_home)], cwd=REPO, capture_output=True, text=True
        ).stdout
        assert out.startswith("busy") and "outer" in out
    with pytest.raises(ChainBusy, match="nobody"), round_chain(auf_home, "a"):
        raise ChainBusy("nobody")  # the lock is released on errors too
    with round_chain(auf_home, "again"):
        pass


def test_the_dagster_home_queues_one_round_run_at_a_time(tmp_path):
    folder = home_module.ensure_dagster_home(tmp_path)
    instance = dg.DagsterInstance.from_config(str(folder))
    limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {"key": "auf/chain", "value": "rounds", "limit": 1} in limits
    # A user's own settings are kept; the limit is added once.
    config = yaml.safe_load((folder / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = 3
    (folder / "dagster.yaml").write_text(yaml.safe_dump(config))
    home_module.ensure_dagster_home(tmp_path)
    config = yaml.safe_load((folder / "dagster.yaml").read_text())
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 3
    assert len(config["concurrency"]["runs"]["tag_concurrency_limits"]) == 1


def test_round_jobs_carry_the_chain_tag():
    from auf_assets.definitions import defs

    for name in ("active_round", "pair_selection", "labelled_round", "policy_round"):
        assert defs.resolve_job_def(name).tags.get("auf/chain") == "rounds"


# -- the chain with real (tiny) rounds --------------------------------------------------------


@pytest.fixture()
def pool(auf_home):
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
    return instance


def _chain_check(result) -> dg.AssetCheckEvaluation:
    return next(
        c for c in result.get_asset_check_evaluations() if c.check_name == "round_chain_current"
    )


def test_a_round_whose_previous_round_has_no_checkpoint_fails_and_names_it(pool, tiny_lm_dir):
    store = DuckDBStore()
    before_model = [a for a in ROUND_ASSETS if a is not reward_model]
    pool.add_dynamic_partitions("rounds", ["round-0001", "round-0002"])
    assert dg.materialize(
        before_model,
        instance=pool,
        partition_key="round-0001",
        resources=tiny_resources(tiny_lm_dir),
        run_config=tiny_run_config(tiny_lm_dir),
    ).success
    with pytest.raises(dg.Failure, match="builds on the reward model of round-0001, which has"):
        materialize_round(pool, "round-0002", tiny_lm_dir)
    assert store.count_rows("reward_scores", "round-0002") == 0
    assert store.count_rows("reward_models") == 0


def test_rerunning_an_earlier_round_marks_the_later_ones_stale(
    pool, tiny_lm_dir, auf_home, monkeypatch, capsys
):
    store = DuckDBStore()
    first = materialize_round(pool, "round-0001", tiny_lm_dir)
    assert _chain_check(first).passed
    second = materialize_round(pool, "round-0002", tiny_lm_dir)
    assert _chain_check(second).passed
    model_2 = store.reward_model_record("round-0002")
    assert model_2["base_round"] == "round-0001"
    assert model_2["base_path"] == store.reward_model_record("round-0001")["path"]
    scores_2 = store.round_rows("reward_scores", "round-0002")
    assert set(scores_2["reward_model_path"]) == {model_2["base_path"]}

    rerun = materialize_round(pool, "round-0001", tiny_lm_dir)
    check = _chain_check(rerun)
    assert not check.passed
    assert check.metadata["stale_rounds"].value == ["round-0002"]
    assert "round-0002" in check.metadata["first_stale_reason"].value
    # The old checkpoint file was replaced by a new name.
    assert store.reward_model_record("round-0001")["path"] != model_2["base_path"]
    # No new round starts on top of a stale one.
    with dg.build_sensor_context(
        instance=pool, resources={"store": store, "labelling": LabellingSettings()}
    ) as context:
        result = next_round(context)
    reason = result.skip_message if hasattr(result, "skip_message") else result.skip_reason
    assert "stale from round-0002" in str(reason)
    # `auf rounds` says the same, in round order.
    monkeypatch.setenv("DAGSTER_HOME", str(auf_home / "dagster"))  # restored after the test
    assert cli_main(["rounds"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("round-0001:") < printed.index("round-0002:")
    assert "STALE" in printed.split("round-0002:")[1]
    assert "STALE" not in printed.split("round-0002:")[0]
    assert "stale rounds, to re-run oldest first: round-0002" in printed
    # Re-running round 2 makes the chain current again.
    assert _chain_check(materialize_round(pool, "round-0002", tiny_lm_dir)).passed


def test_a_moved_home_keeps_working(pool, tiny_lm_dir, auf_home, tmp_path, monkeypatch):
    assert materialize_round(pool, "round-0001", tiny_lm_dir).success
    stored = DuckDBStore().reward_model_record("round-0001")["path"]
    assert not Path(stored).is_absolute()
    moved = tmp_path / "moved-home"
    shutil.move(str(auf_home), moved)
    monkeypatch.setenv("AUF_HOME", str(moved))
    second = materialize_round(pool, "round-0002", tiny_lm_dir)
    assert second.success
    assert set(DuckDBStore().round_rows("reward_scores", "round-0002")["reward_model_round"]) == {
        "round-0001"
    }


def test_ensemble_settings_that_cannot_change_fail_and_the_others_apply(pool, tiny_lm_dir):
    assert materialize_round(pool, "round-0001", tiny_lm_dir).success
    wider = UncertaintyModel(n_heads=8, hidden=[16, 16], lr=1e-2, max_steps=5, batch_size=4)
    with pytest.raises(dg.Failure, match="n_heads"):
        materialize_round(pool, "round-0002", tiny_lm_dir, uncertainty_model=wider)
    fewer_steps = UncertaintyModel(
        n_heads=4, hidden=[16, 16], lr=1e-2, max_steps=1, batch_size=4, train_passes=1
    )
    result = materialize_round(pool, "round-0002", tiny_lm_dir, uncertainty_model=fewer_steps)
    meta = next(
        e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == reward_model.key
    )
    assert meta["train_steps"].value <= 1


def test_the_anchor_count_is_one_rule(pool, tiny_lm_dir):
    store = DuckDBStore()
    assert materialize_round(pool, "round-0001", tiny_lm_dir).success
    assert materialize_round(pool, "round-0002", tiny_lm_dir).success
    judged = store.sql_for_tests(
        "SELECT round_id, count(DISTINCT prompt_id) AS n FROM judgements "
        "WHERE preference IN ('a', 'b', 'tie') GROUP BY round_id"
    )
    per_round = dict(judged.iter_rows())
    models = {
        r["round_id"]: r["prompts_done"]
        for r in store.sql_for_tests("SELECT * FROM reward_models").to_dicts()
    }
    assert models["round-0001"] == per_round.get("round-0001", 0)
    assert models["round-0002"] == per_round.get("round-0001", 0) + per_round.get("round-0002", 0)
