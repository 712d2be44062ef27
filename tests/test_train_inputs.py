"""`auf train` and the training assets refuse what they cannot use before any work, and say
when there is nothing to measure or too little for the numbers to mean anything."""

from __future__ import annotations

import argparse
import math

import dagster as dg
import polars as pl
import pytest

from auf_assets.cli.common import round_arg
from auf_assets.core.checkpoints import SMALL_TRAIN_PAIRS
from auf_assets.training import dpo_policy, policy_eval, reward_model_checkpoint, training_data
from resources.store import DuckDBStore


def _instance(home, monkeypatch) -> dg.DagsterInstance:
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def _state(instance: dg.DagsterInstance) -> tuple[int, list[str]]:
    return len(instance.get_runs()), sorted(instance.get_dynamic_partitions("rounds"))


def test_round_numbers_and_keys_name_the_same_round():
    for given in ("1", "0001", "round-1", "round-0001", " 1 "):
        assert round_arg(given) == "round-0001"
    assert round_arg("12345") == "round-12345"
    for bad in ("0", "round-0", "one", "round-x", "-1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="number .3. or its key"):
            round_arg(bad)


def test_auf_train_refuses_bad_arguments_before_any_run(home, monkeypatch, capsys, tmp_path):
    from auf_assets.cli import main

    instance = _instance(home, monkeypatch)
    before = _state(instance)
    refused = {
        ("--round", "9"): "round-0009 has no judgements",
        ("--device", "bogus"): "device must be auto, cpu, cuda or cuda:N",
        ("--base-model", str(tmp_path / "missing")): "--base-model",
    }
    for args, problem in refused.items():
        assert main(["train", *args]) == 2, args
        err = capsys.readouterr().err
        assert problem in err and "nothing was started" in err, (args, err)
    # Numbers out of range are refused by the parser, with the range.
    for args, problem in {
        ("--max-steps", "0"): "argument --max-steps: must be an integer in [1, inf), got 0",
        ("--learning-rate", "-1"): "argument --learning-rate:",
        ("--max-length", "0"): "argument --max-length:",
    }.items():
        with pytest.raises(SystemExit) as exit_:
            main(["train", *args])
        assert exit_.value.code == 2 and problem in capsys.readouterr().err, args
    assert "rounds with judgements: round-0001, round-0002" in main_err(main, ["--round", "9"])
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--round", "nonsense"])
    assert exit_.value.code == 2
    assert "'nonsense' is not a round" in capsys.readouterr().err
    # nothing ran, and no partition was added for a round that does not exist
    assert _state(instance) == before
    assert not {"9", "round-0009"} & set(instance.get_dynamic_partitions("rounds"))


def main_err(main, args) -> str:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", *args]) == 2
    return err.getvalue()


def test_the_round_format_is_in_the_help(capsys):
    from auf_assets.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "its number (3) or its key" in " ".join(capsys.readouterr().out.split())


def test_an_empty_home_is_refused_at_once(tmp_path, monkeypatch, capsys):
    from auf_assets.cli import main

    empty = tmp_path / "empty-home"
    monkeypatch.setenv("AUF_HOME", str(empty))
    instance = _instance(empty, monkeypatch)
    for args, problem in (
        ([], "no round has judgements yet"),
        (["--reward-model"], "no round has judgements yet"),
        (["--round", "1"], "round-0001 has no judgements"),
    ):
        assert main(["train", *args]) == 2
        assert problem in capsys.readouterr().err
    assert _state(instance) == (0, [])


def _all_ties(store: DuckDBStore, round_id: str) -> pl.DataFrame:
    verdicts = store.round_rows("judgements", round_id)
    store.replace_round(
        "judgements",
        round_id,
        verdicts.with_columns(
            preference=pl.lit("tie"), chosen_completion_id=pl.lit(None, dtype=pl.String)
        ),
    )
    return verdicts


def test_a_home_of_ties_says_no_labelled_pair(home, monkeypatch, capsys, tiny_chat_lm_dir):
    from auf_assets.cli import main

    instance = _instance(home, monkeypatch)
    store = DuckDBStore()
    saved = {r: _all_ties(store, r) for r in ("round-0001", "round-0002")}
    try:
        before = _state(instance)
        for extra in ([], ["--reward-model"], ["--round", "1"]):
            assert main(["train", "--base-model", str(tiny_chat_lm_dir), *extra]) == 2
            err = capsys.readouterr().err
            assert "has no labelled pair" in err and "tie" in err, err
            assert "Traceback" not in err
        assert _state(instance) == before
        ephemeral = dg.DagsterInstance.ephemeral()
        ephemeral.add_dynamic_partitions("rounds", ["round-0002"])
        with pytest.raises(dg.Failure, match="rounds round-0001..round-0002 has no labelled pair"):
            dg.materialize(
                [dpo_policy],
                instance=ephemeral,
                partition_key="round-0002",
                resources={"store": store, "training": _settings(tiny_chat_lm_dir)},
            )
    finally:
        for round_id, verdicts in saved.items():
            store.replace_round("judgements", round_id, verdicts)


def _settings(tiny_chat_lm_dir, **overrides):
    from resources.training import TrainingResource

    return TrainingResource(
        base_model=str(tiny_chat_lm_dir),
        device="cpu",
        max_steps=2,
        batch_size=2,
        max_length=512,
        lora_r=4,
        lora_alpha=8,
        **overrides,
    )


def test_an_empty_held_out_split_says_why_and_stores_no_nan(home, tiny_lm_dir, tiny_chat_lm_dir):
    from test_training import _training_resources

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["round-0002"])
    result = dg.materialize(
        [dpo_policy, reward_model_checkpoint, policy_eval],
        instance=instance,
        partition_key="round-0002",
        resources=_training_resources(tiny_lm_dir, tiny_chat_lm_dir)
        | {"training": _settings(tiny_chat_lm_dir, test_fraction=0.0)},
        run_config={"ops": {"policy_eval": {"config": {"win_rate_prompts": 0}}}},
    )
    assert result.success
    meta = {
        name: {
            k: v.value for k, v in result.asset_materializations_for_node(name)[0].metadata.items()
        }
        for name in ("dpo_policy", "reward_model_checkpoint", "policy_eval")
    }
    for values in meta.values():  # nothing shows nan
        assert not any(isinstance(v, float) and math.isnan(v) for v in values.values())
    rm, ev = meta["reward_model_checkpoint"], meta["policy_eval"]
    assert "heldout_accuracy" not in rm
    assert rm["heldout_accuracy_skipped"].startswith("no held-out pairs: test_fraction is 0")
    assert "implicit_accuracy_vs_labels" not in ev
    assert ev["implicit_accuracy_vs_labels_skipped"].startswith("no held-out pairs")
    store = DuckDBStore()
    evals = store.evals().filter(pl.col("round_id") == "round-0002")
    assert evals.filter(pl.col("kind").is_in(["reward_model", "dpo_policy"])).height == 0
    card = (store.root / rm["checkpoint"] / "README.md").read_text()
    assert "not measured: no held-out pairs" in card
    # too few pairs for the curves to mean anything: said in the metadata
    assert f"fewer than {SMALL_TRAIN_PAIRS}" in meta["dpo_policy"]["note"]
    assert str(store.root) not in str(meta["dpo_policy"]["checkpoint"])  # relative to the home


def test_the_reason_for_no_held_out_pairs_names_the_split(home):
    data = training_data(DuckDBStore(), "round-0002", 1e-6)
    assert data.test.height == 0 and data.train.height > 0
    reason = data.no_heldout_reason()
    prompts = data.train["prompt_id"].n_unique()
    assert f"none of the {prompts} labelled prompts of rounds round-0001..round-0002" in reason
    assert "test_fraction 1e-06" in reason


def test_the_split_of_no_prompts_is_empty():
    """The crash behind "Series of type Null does not have lt operator": an empty input."""
    from auf_assets.core.release import in_test_split

    split = in_test_split(pl.Series("prompt_id", [], dtype=pl.String), 0.1)
    assert split.dtype == pl.Boolean and split.len() == 0
