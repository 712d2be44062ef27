"""Bad settings in the environment: the code location still loads, and whatever uses the settings
stops with a message that names the variable, its value and what is allowed.

Dagster builds a ConfigurableResource (and calls its `setup_for_execution`) for sensor and
schedule ticks as well as for runs, so the labelling settings check themselves there: a run fails,
a tick skips (the sensors and the schedule check first), and `auf labels` exits with code 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

import sensors.rounds as rounds
from auf_assets.cli import main as cli_main
from auf_assets.labels import annotation_batch
from resources.labelling import LabellingSettings, labelling_from_env
from resources.store import DuckDBStore
from sensors.rounds import labels_landed, next_round, nightly_round, nightly_settings

REPO = Path(__file__).resolve().parents[1]


def test_labelling_from_env_keeps_the_valid_values_and_records_the_rest():
    s = labelling_from_env(
        {
            "AUF_LABEL_SOURCE": "humans",
            "AUF_LABEL_MIN_FRACTION": "0.5",
            "AUF_LABEL_WAIT_HOURS": "2",
            "AUF_MAX_ROUNDS": "many",
            "AUF_PUBLISH_AFTER_ROUND": "maybe",
            "AUF_LABEL_RESOLUTION": " ",  # blank: unset
        }
    )
    assert (s.min_fraction, s.wait_hours) == (0.5, 2.0)  # valid values are kept
    assert (s.source, s.max_rounds, s.publish_after_round) == ("llm_judge", 0, False)  # defaults
    problem = s.problem
    assert "AUF_LABEL_SOURCE='humans' is invalid" in problem
    assert "one of llm_judge, reward_model_judge, oracle, people" in problem
    assert "AUF_MAX_ROUNDS='many' is invalid" in problem and "valid integer" in problem
    assert "AUF_PUBLISH_AFTER_ROUND='maybe' is invalid" in problem and "true/false" in problem
    assert "MIN_FRACTION" not in problem and "WAIT_HOURS" not in problem
    assert "RESOLUTION" not in problem
    with pytest.raises(ValueError, match="AUF_LABEL_SOURCE='humans'"):
        s.check()
    out_of_range = labelling_from_env({"AUF_LABEL_MIN_FRACTION": "2"})
    assert "AUF_LABEL_MIN_FRACTION='2' is invalid" in out_of_range.problem
    assert "less than or equal to 1" in out_of_range.problem and out_of_range.min_fraction == 1.0
    assert labelling_from_env({"AUF_LABEL_SOURCE": "people"}).problem is None


def test_nightly_settings_fall_back_to_the_default_and_say_why():
    n = nightly_settings({"AUF_NIGHTLY_CRON": "every night", "AUF_NIGHTLY_TIMEZONE": "Mars/Base"})
    assert (n.cron, n.timezone) == ("0 2 * * *", "UTC")
    assert "AUF_NIGHTLY_CRON='every night' is invalid" in n.problem
    assert "not a valid cron string" in n.problem
    assert "AUF_NIGHTLY_TIMEZONE='Mars/Base' is invalid" in n.problem
    assert "not a known time zone" in n.problem
    only_tz = nightly_settings({"AUF_NIGHTLY_CRON": "30 1 * * 1", "AUF_NIGHTLY_TIMEZONE": "x"})
    assert only_tz.cron == "30 1 * * 1" and "AUF_NIGHTLY_CRON" not in only_tz.problem
    assert nightly_settings({}).problem is None


def test_the_sensors_and_the_schedule_skip_with_the_message(auf_home, monkeypatch):
    bad = labelling_from_env({"AUF_LABEL_SOURCE": "humans", "AUF_LABEL_MIN_FRACTION": "0.5"})
    dropped = bad.inbox_dir / "labels.jsonl"
    dropped.parent.mkdir(parents=True)
    dropped.write_text('{"pair_id": "p", "choice": "A"}\n')
    instance = dg.DagsterInstance.ephemeral()
    resources = {"store": DuckDBStore(), "labelling": bad}
    for sensor in (labels_landed, next_round):
        # The resource is built (and set up) for the tick: no error, the sensor skips.
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
        assert isinstance(result, dg.SkipReason)
        assert "AUF_LABEL_SOURCE='humans' is invalid" in result.skip_message
    assert dropped.exists()  # nothing imported with half-valid settings
    with dg.build_schedule_context(instance=instance, resources=resources) as context:
        assert "AUF_LABEL_SOURCE='humans'" in nightly_round(context).skip_message

    good = {"store": DuckDBStore(), "labelling": LabellingSettings()}
    monkeypatch.setattr(rounds, "NIGHTLY", nightly_settings({"AUF_NIGHTLY_CRON": "x"}))
    with dg.build_schedule_context(instance=instance, resources=good) as context:
        skip = nightly_round(context)
    assert "AUF_NIGHTLY_CRON='x' is invalid" in skip.skip_message
    assert instance.get_dynamic_partitions("rounds") == []  # started nothing


def test_a_run_that_uses_the_settings_fails_with_the_message(auf_home):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    result = dg.materialize(
        [annotation_batch],
        instance=instance,
        partition_key="round-0001",
        resources={
            "store": DuckDBStore(),
            "labelling": labelling_from_env({"AUF_MAX_ROUNDS": "-1"}),
        },
        raise_on_error=False,
    )
    assert not result.success
    failures = [
        e.event_specific_data.error.message
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.RESOURCE_INIT_FAILURE
    ]
    assert failures and "AUF_MAX_ROUNDS='-1' is invalid" in failures[0]
    assert "greater than or equal to 0" in failures[0]


def test_auf_labels_exits_with_the_message(auf_home, monkeypatch, capsys):
    monkeypatch.setenv("AUF_LABEL_RESOLUTION", "loudest")
    assert cli_main(["labels", "status"]) == 2
    err = capsys.readouterr().err
    assert "AUF_LABEL_RESOLUTION='loudest' is invalid" in err and "'majority'" in err
    labels = auf_home / "x.jsonl"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("")
    assert cli_main(["labels", "import", str(labels)]) == 2
    assert "AUF_LABEL_RESOLUTION='loudest'" in capsys.readouterr().err


_LOAD_AND_TICK = """
import json
import dagster as dg
from auf_assets import definitions
from sensors.rounds import labels_landed, nightly_round

dg.Definitions.validate_loadable(definitions.defs)
repo = definitions.defs.get_repository_def()
top = repo.get_top_level_resources()
out = {"cron": repo.get_schedule_def("nightly_round").cron_schedule}
instance = dg.DagsterInstance.ephemeral()
# As the code server evaluates a tick: the definitions' own resources, built for the tick.
need = lambda d: {k: v for k, v in top.items() if k in d.required_resource_keys}
with dg.build_sensor_context(
    instance=instance, definitions=definitions.defs, resources=need(labels_landed)
) as context:
    out["sensor"] = labels_landed.evaluate_tick(context).skip_message
with dg.build_schedule_context(instance=instance, resources=need(nightly_round)) as context:
    out["schedule"] = nightly_round.evaluate_tick(context).skip_message
print("RESULT " + json.dumps(out))
"""


def _load_and_tick(tmp_path: Path, **env: str) -> dict:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUF_LABEL_", "AUF_NIGHTLY_", "AUF_MAX_", "AUF_ORACLE_"))
    }
    environ.update(AUF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", **env)
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_TICK],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.process
def test_the_code_location_loads_with_bad_values_and_ticks_say_why(tmp_path):
    out = _load_and_tick(
        tmp_path,
        AUF_NIGHTLY_CRON="every night",
        AUF_LABEL_SOURCE="people",
        AUF_LABEL_MIN_FRACTION="lots",
    )
    assert out["cron"] == "0 2 * * *"
    assert "AUF_LABEL_MIN_FRACTION='lots' is invalid" in out["sensor"]
    assert "valid number" in out["sensor"]
    assert "AUF_NIGHTLY_CRON='every night' is invalid" in out["schedule"]
    assert "not a valid cron string" in out["schedule"]


def test_serving_settings_from_env_and_their_errors():
    from resources.serving import engine_from_env, judge_from_env

    engine = engine_from_env(
        {"AUF_ENGINE_BACKEND": "openai", "AUF_ENGINE_BASE_URL": "http://pool:8000/v1"}
    )
    assert engine.backend == "openai" and engine.server.base_url == "http://pool:8000/v1"
    assert engine.server.max_retries == 5 and not engine.env_errors  # the rest stays default
    judge = judge_from_env({"AUF_JUDGE_BACKEND": "tgi", "AUF_JUDGE_MODEL": "Qwen/Qwen3-32B"})
    assert judge.model == "Qwen/Qwen3-32B" and judge.backend == "transformers"
    assert "AUF_JUDGE_BACKEND='tgi' is invalid" in judge.env_errors
    judge.setup_for_execution(dg.build_init_resource_context())  # a tick: no run, no failure

    @dg.asset(required_resource_keys={"judge"})
    def uses_the_judge(context) -> None:
        pass

    result = dg.materialize([uses_the_judge], resources={"judge": judge}, raise_on_error=False)
    assert not result.success
    assert "bad judge settings in the environment: AUF_JUDGE_BACKEND='tgi'" in str(
        result.all_events
    )
