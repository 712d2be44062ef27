"""One settings object per concern, each checking itself, and every entry point refusing a bad
value before any work: the CLI (flags, environment, run config), a launched job's run config
(the first step fails, before generation), the environment, and the sensors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from auf_assets.cli import main
from auf_assets.core.settings import (
    EnsembleSettings,
    RoundSettings,
    SettingsError,
    TrainingSettings,
)
from resources.store import DuckDBStore

REPO = Path(__file__).resolve().parents[1]


# -- the settings objects ---------------------------------------------------------------------


def test_settings_check_themselves_and_say_the_range():
    with pytest.raises(SettingsError, match=r"acquisition_width must be .* in \[0, inf\), got -1"):
        RoundSettings(acquisition_width=-1)
    with pytest.raises(SettingsError, match=r"train_passes must be an integer in \[1, inf\)"):
        RoundSettings(train_passes=0)
    with pytest.raises(SettingsError, match="unknown selection method 'nonsense'; known: random"):
        RoundSettings(method="nonsense")
    with pytest.raises(SettingsError, match="encoder: bad encoder setting"):
        RoundSettings(encoder="minilm+")
    with pytest.raises(SettingsError, match=r"EnsembleSettings.min_steps .* \[0, inf\), got -1"):
        RoundSettings(ensemble={"min_steps": -1})
    with pytest.raises(SettingsError, match=r"lora_dropout must be .* in \[0, 1\), got 1"):
        TrainingSettings(lora_dropout=1.0)
    with pytest.raises(SettingsError, match=r"dpo_beta must be .* in \(0, inf\)"):
        TrainingSettings(dpo_beta=0.0)
    assert EnsembleSettings(anchor_half_life=float("inf")).anchor_half_life == float("inf")


def test_the_ensemble_config_is_the_ensemble_settings_plus_the_runs_own():
    from auf_assets.core.ensemble import EnsembleConfig

    assert isinstance(EnsembleConfig(), EnsembleSettings)
    assert EnsembleConfig().learning() == EnsembleSettings().learning()  # the reference
    with pytest.raises(ValueError, match=r"EnsembleConfig.n_heads must be an integer in \[1"):
        EnsembleConfig(n_heads=0)


def test_renamed_keys_fail_naming_the_new_key():
    from auf_assets.core.simulation import SimulationConfig
    from auf_assets.round import SelectedPairsConfig
    from resources.training import TrainingResource

    with pytest.raises(ValueError, match="'beta' was renamed to 'acquisition_width'"):
        SelectedPairsConfig(beta=2.0)
    with pytest.raises(ValueError, match="'beta' was renamed to 'acquisition_width'"):
        SimulationConfig.from_dict({"beta": 2.0})
    with pytest.raises(ValueError, match="'beta' was renamed to 'dpo_beta'"):
        TrainingResource(beta=0.2)
    assert SelectedPairsConfig(acquisition_width=2.0).acquisition_width == 2.0
    assert TrainingResource(dpo_beta=0.2).policy_dpo_beta == 0.2
    assert TrainingResource().policy_dpo_beta == TrainingSettings().dpo_beta
    with pytest.raises(ValueError, match=r"learning_rate must be .* \(0, inf\)"):
        TrainingResource(learning_rate=-1.0)


# -- a launched job's run config: the first step fails before any generation ------------------


def _resources() -> dict:
    # Nothing here loads a model until a step uses it; the runs below never get that far.
    from resources.encoder import FeatureEncoder
    from resources.engine import GenerationEngine
    from resources.judge import RubricJudge
    from resources.label_source import label_source
    from resources.labelling import LabellingSettings
    from resources.reward_judge import RewardModelJudge
    from resources.reward_model import UncertaintyModel

    return {
        "store": DuckDBStore(),
        "engine": GenerationEngine(device="cpu"),
        "encoder": FeatureEncoder(device="cpu"),
        "judge": RubricJudge(device="cpu"),
        "reward_judge": RewardModelJudge(device="cpu"),
        "label_source": label_source,
        "labelling": LabellingSettings(),
        "uncertainty_model": UncertaintyModel(),
    }


def _failed_steps(result) -> dict[str, str]:
    return {
        e.step_key: e.step_failure_data.error.message
        for e in result.all_events
        if e.is_step_failure
    }


@pytest.mark.parametrize(
    ("run_config", "named"),
    [
        (
            {"ops": {"selected_pairs": {"config": {"acquisition_width": -1.0}}}},
            "ops.selected_pairs.config: acquisition_width must be a finite number in [0, inf)",
        ),
        (
            {"ops": {"selected_pairs": {"config": {"beta": 2.0}}}},
            "'beta' was renamed to 'acquisition_width'",
        ),
        (
            {"resources": {"uncertainty_model": {"config": {"train_passes": 0}}}},
            "train_passes must be an integer in [1, inf), got 0",
        ),
        (
            {"resources": {"encoder": {"config": {"model": "all-minilm-l6-v2"}}}},
            "set encoder: 'all-minilm-l6-v2+text-stats'",
        ),
    ],
)
def test_a_bad_later_step_config_fails_the_first_step(auf_home, run_config, named):
    from auf_assets.prompts import prompt_pool
    from auf_assets.round import ROUND_ASSETS

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    started = time.perf_counter()
    result = dg.materialize(
        ROUND_ASSETS,
        instance=instance,
        partition_key="round-0001",
        resources=_resources(),
        run_config=run_config,
        raise_on_error=False,
    )
    assert not result.success and time.perf_counter() - started < 60
    assert not [e for e in result.all_events if e.is_step_success]  # no step did any work
    failed = _failed_steps(result)
    if "resources" in run_config:
        # In one process Dagster builds every resource before the first step; each step in its
        # own process (a deployment) builds only its own, and round_prompts' check catches it.
        messages = [
            e.event_specific_data.error.to_string()
            for e in result.all_events
            if getattr(e.event_specific_data, "error", None) is not None
        ]
        assert failed in ({}, {"round_prompts": failed.get("round_prompts")})
        assert any(named in m for m in [*messages, *failed.values()]), messages
    else:
        assert list(failed) == ["round_prompts"], failed  # the first step, nothing after it
        assert named in failed["round_prompts"] and "nothing was run" in failed["round_prompts"]
    store = DuckDBStore()
    assert store.count_rows("round_prompts") == 0 and store.count_rows("completions") == 0


def test_the_policy_round_job_checks_its_dpo_step_first(auf_home):
    from auf_assets.definitions import defs
    from auf_assets.prompts import prompt_pool

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    result = defs.resolve_job_def("policy_round").execute_in_process(
        instance=instance,
        partition_key="round-0001",
        run_config={"ops": {"dpo_policy": {"config": {"max_steps": 0}}}},
        raise_on_error=False,
    )
    failed = _failed_steps(result)
    assert list(failed) == ["round_prompts"]
    assert "ops.dpo_policy.config.max_steps" in failed["round_prompts"]
    assert "greater than or equal to 1" in failed["round_prompts"]


def test_the_launchpad_refuses_a_method_outside_the_choices():
    from auf_assets.definitions import defs
    from auf_assets.preflight import run_config_problems

    job = defs.resolve_job_def("active_round")
    problems = run_config_problems(
        job, {"ops": {"selected_pairs": {"config": {"method": "nonsense"}}}}
    )
    assert len(problems) == 1 and "nonsense" in problems[0] and "deltaucb" in problems[0]
    # The resources of the run, as every step of a deployment (one process each) builds them.
    assert run_config_problems(
        job, {"resources": {"uncertainty_model": {"config": {"train_passes": 0}}}}
    ) == ["resources.uncertainty_model.config: train_passes must be an integer in [1, inf), got 0"]
    renamed = run_config_problems(job, {"resources": {"labeling": {"config": {}}}})
    assert renamed == ["resources.labeling was renamed to resources.labelling"]
    assert run_config_problems(job, {}) == []


# -- the environment: one reader, errors named by variable --------------------------------------


def test_every_environment_setting_is_read_by_one_mechanism():
    from resources.environment import environment_problems, hub_from_env

    problems = environment_problems(
        {
            "AUF_ENGINE_BACKEND": "bogus",
            "AUF_JUDGE_DEVICE": "cuda:0",
            "AUF_LABEL_WAIT_HOURS": "-1",
            "AUF_BUDGET_MAX_DOLLARS": "abc",
        }
    )
    text = "; ".join(problems)
    assert len(problems) == 3  # engine, labelling, budget; the judge's value is fine
    assert "bad engine settings in the environment: AUF_ENGINE_BACKEND='bogus' is invalid" in text
    assert "AUF_LABEL_WAIT_HOURS='-1' is invalid (wait_hours: input should be greater" in text
    assert "AUF_BUDGET_MAX_DOLLARS='abc' is invalid (max_dollars: input should be a valid" in text
    assert environment_problems({}) == []
    assert hub_from_env({"AUF_HUB_REPO": "me/prefs"}).repo_id == "me/prefs"


# -- sensors: skip with the message -------------------------------------------------------------


def test_sensors_skip_on_any_bad_setting_of_the_runs_they_start(auf_home, monkeypatch):
    from resources.labelling import LabellingSettings
    from sensors.rounds import next_round

    monkeypatch.setenv("AUF_ENGINE_BACKEND", "bogus")
    monkeypatch.setenv("AUF_BUDGET_MAX_DOLLARS", "abc")
    instance = dg.DagsterInstance.ephemeral()
    resources = {"store": DuckDBStore(), "labelling": LabellingSettings()}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = next_round(context)
    assert isinstance(result, dg.SkipReason)
    assert "AUF_ENGINE_BACKEND='bogus'" in result.skip_message
    assert "AUF_BUDGET_MAX_DOLLARS='abc'" in result.skip_message
    assert instance.get_dynamic_partitions("rounds") == []


# -- the CLI: refused at once, before a prompt is ingested or a model loads ---------------------


def _refused(capsys, argv: list[str]) -> str:
    """Run `auf argv`, expect a refusal (exit 2) within a few seconds; return stderr."""
    started = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and time.perf_counter() - started < 3
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--method", "nonsense"], "unknown selection method 'nonsense'; known: random,"),
        (["demo", "--batch-size", "-5"], "--batch-size: must be an integer in [1, inf), got -5"),
        (["demo", "--batch-size", "0"], "--batch-size: must be an integer in [1, inf), got 0"),
        (["demo", "--rounds", "0"], "--rounds: must be an integer in [1, inf)"),
        (["demo", "--acquisition-width", "-1"], "must be a finite number in [0, inf)"),
        (["demo", "--beta", "nan"], "must be a finite number in [0, inf), got nan"),
        (["simulate", "--pool", "p", "--out", "o", "--batch", "-5"], "--batch/-B: must be"),
        (["simulate", "--pool", "p", "--out", "o", "--heads", "0"], "n_heads must be an integer"),
        (
            ["simulate", "--pool", "p", "--out", "o", "--method", "nope"],
            "unknown selection method 'nope'",
        ),
        (["simulate", "--pool", "p", "--out", "o", "--heldout", "1"], "in [0, 1), got 1.0"),
        (["simulate", "--pool", "p", "--out", "o", "--dpo-beta", "0"], "dpo_beta must be"),
        (["simulate", "--pool", "p", "--out", "o", "--encoder", "x++y"], "bad encoder setting"),
        (["bench", "--pool", "p", "--jobs", "-1"], "--jobs/-j: must be an integer in [0, inf)"),
        (["train", "--round", "latest"], "'latest' is not a round: give its number (3) or its key"),
        (["train", "--learning-rate", "-1"], "learning_rate must be a finite number in (0, inf)"),
        (["train", "--max-steps", "0"], "--max-steps: must be an integer in [1, inf)"),
        (["export", "--out", "o", "--test-fraction", "1.5"], "must be a finite number in [0, 1)"),
    ],
)
def test_a_bad_flag_is_refused_when_parsed(auf_home, capsys, argv, message):
    assert message in _refused(capsys, argv)
    assert not auf_home.exists()  # no home made, nothing ingested, no model loaded


def test_auf_demo_refuses_a_bad_environment_value_at_once(auf_home, capsys, monkeypatch):
    monkeypatch.setenv("AUF_BUDGET_MAX_DOLLARS", "abc")
    started = time.perf_counter()
    assert main(["demo"]) == 2
    assert time.perf_counter() - started < 3
    assert "AUF_BUDGET_MAX_DOLLARS='abc' is invalid" in capsys.readouterr().err
    assert not auf_home.exists()


def test_auf_demo_refuses_a_bad_deployment_setting(auf_home, capsys, monkeypatch):
    monkeypatch.setenv("AUF_DEPLOYMENT", "k8s")
    monkeypatch.setenv("AUF_K8S_GPUS_PER_STEP", "two")
    assert main(["demo"]) == 2
    assert "AUF_K8S_GPUS_PER_STEP='two': expected an integer >= 0" in capsys.readouterr().err
    assert not auf_home.exists()


def test_auf_demo_refuses_a_bad_run_config_before_any_work(auf_home, capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "ops:\n  selected_pairs:\n    config: {beta: 2.0}\n"
        "resources:\n  uncertainty_model:\n    config: {max_steps: 0}\n"
    )
    assert main(["demo", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "'beta' was renamed to 'acquisition_width'" in err
    assert "resources.uncertainty_model.config: EnsembleConfig.max_steps must be" in err
    assert "nothing was run" in err and not auf_home.exists()


def test_auf_train_takes_a_round_number_and_never_adds_an_unknown_round(
    auf_home, capsys, monkeypatch
):
    from auf_assets.cli.common import round_arg

    assert round_arg("1") == round_arg("0001") == round_arg("round-0001") == "round-0001"
    monkeypatch.setenv("DAGSTER_HOME", str(auf_home / "dagster"))  # restored after the test
    assert main(["train", "--round", "1"]) == 2
    assert "round-0001 has no judgements; rounds with judgements: none" in capsys.readouterr().err
    assert dg.DagsterInstance.get().get_dynamic_partitions("rounds") == []


def test_auf_bench_checks_the_methods_before_reading_the_pool(auf_home, capsys):
    assert main(["bench", "--pool", "missing.parquet", "--methods", "random,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown method(s) ['nope']" in err and "not found" not in err


@pytest.mark.process
def test_a_refusal_in_a_fresh_process_takes_about_a_second(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUF_")}
    env.update(AUF_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "auf_assets.cli", "demo", "--method", "nonsense"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    wall = time.perf_counter() - started
    assert proc.returncode == 2 and "known: random" in proc.stderr
    assert wall < 5, wall  # no torch, Dagster or model import on the way to the refusal
    assert not (tmp_path / "home").exists()
