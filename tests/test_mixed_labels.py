"""The `judge+people` label source end to end with the tiny models: the judge screens every
pair, the least confident (and a calibration pair) go to people, their labels decide those, the
round trains, each verdict says who decided it, and the agreement is measured and checked."""

from __future__ import annotations

import json
from types import SimpleNamespace

import dagster as dg
import polars as pl
import pytest
from test_labelling import drop, select_pairs_for
from test_round import tiny_resources

from auf_assets.checks import judge_agreement, judgements_recorded
from auf_assets.cli import main as cli_main
from auf_assets.core.routing import ROUTE_CALIBRATION, ROUTE_JUDGE, ROUTE_UNSURE
from auf_assets.jobs import LABELLED_ASSETS
from auf_assets.judge_agreement import comparisons
from auf_assets.label_inbox import label_status
from auf_assets.labels import annotation_batch, judge_screening
from auf_assets.prompts import prompt_pool
from auf_assets.release import preference_dataset
from auf_assets.release_report import dataset_report
from resources.labelling import LabellingSettings
from resources.store import DuckDBStore
from sensors.rounds import labels_landed

R1 = "round-0001"


def mixed(**overrides) -> LabellingSettings:
    settings = {
        "source": "judge+people",
        "settle_seconds": 0,
        "people_threshold": 0.0,
        "people_budget": 1,
        "calibration_share": 0.01,
        **overrides,
    }
    return LabellingSettings(**settings)


@pytest.fixture(scope="module")
def screened(tmp_path_factory, tiny_lm_dir):
    """round-0001 selected and screened: 4 pairs, 1 unsure and 1 calibration pair sent out."""
    root = tmp_path_factory.mktemp("mixed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUF_HOME", str(root))
        instance = dg.DagsterInstance.ephemeral()
        dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
        result = select_pairs_for(instance, R1, tiny_lm_dir, mixed())
        assert result.success
        yield root, instance, result


def test_the_judge_screens_every_pair_and_sends_the_least_sure_to_people(screened, monkeypatch):
    root, _, result = screened
    monkeypatch.setenv("AUF_HOME", str(root))
    store = DuckDBStore()
    screening = store.round_rows("judge_screening", R1)
    assert screening.height == store.count_rows("pairs", R1) == 4
    assert set(screening["source"]) == {"llm_judge"}
    routes = screening["route"].to_list()
    assert routes.count(ROUTE_UNSURE) == 1 and routes.count(ROUTE_CALIBRATION) == 1
    # the unsure pair is the least confident (a tie or failure has no confidence: first)
    conf = screening["confidence"].fill_null(-1.0).to_list()
    assert conf[routes.index(ROUTE_UNSURE)] == min(conf)
    # only the two routed pairs are in the outbox, and the progress counts only them
    outbox = LabellingSettings().outbox_dir / f"{R1}.jsonl"
    sent = [json.loads(line)["pair_id"] for line in outbox.read_text().splitlines()]
    routed = screening.filter(pl.col("route") != ROUTE_JUDGE)["pair_id"].to_list()
    assert sorted(sent) == sorted(routed)
    [status] = label_status(store, mixed())
    assert (status.pairs, status.labelled_pairs, status.state) == (2, 0, "waiting")
    meta = result.asset_materializations_for_node("judge_screening")[0].metadata
    assert meta["to_people"].value == 2 and meta["judge_decides"].value == 2
    # the judge's aspect scores are stored with the screening (judgements re-uses them)
    assert store.count_rows("judge_scores", R1) > 0


def test_people_decide_the_routed_pairs_and_the_round_trains(
    screened, tmp_path, monkeypatch, tiny_lm_dir, capsys
):
    import shutil

    root, _, _ = screened
    home = tmp_path / "home"
    shutil.copytree(root, home)
    monkeypatch.setenv("AUF_HOME", str(home))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", [R1])
    store, labelling = DuckDBStore(), mixed(min_agreement=0.9)
    screening = store.round_rows("judge_screening", R1)
    batch = [
        json.loads(line) for line in (labelling.outbox_dir / f"{R1}.jsonl").read_text().splitlines()
    ]
    judge = dict(zip(screening["pair_id"], screening["preference"], strict=True))
    route = dict(zip(screening["pair_id"], screening["route"], strict=True))
    swapped = dict(store.presentation_swaps(R1).select("pair_id", "swapped").iter_rows())
    # People agree with the judge on the calibration pair and contradict it on the other.
    people = {}
    rows = []
    for rec in batch:
        pair = rec["pair_id"]
        wanted = judge[pair] if judge[pair] in ("a", "b") else "a"
        people[pair] = wanted if route[pair] == ROUTE_CALIBRATION else {"a": "b", "b": "a"}[wanted]
        shown = {"a": "A", "b": "B"}[people[pair]]
        if swapped[pair]:  # response A on screen is the pair's b
            shown = {"A": "B", "B": "A"}[shown]
        rows.append({"pair_id": pair, "round_id": R1, "choice": shown, "annotator": "ann"})
    drop(SimpleNamespace(labelling=labelling), "labels.jsonl", rows)
    # the sensor imports the file and asks for the labelled half, as in the people mode
    context = dg.build_sensor_context(
        instance=instance, resources={"store": store, "labelling": labelling}
    )
    data = labels_landed(context)
    assert [(r.job_name, r.run_key) for r in data.run_requests] == [
        ("labelled_round", f"labels-{R1}-2")
    ]
    [status] = label_status(store, labelling)
    assert (status.pairs, status.labelled_pairs, status.state) == (2, 2, "ready")

    result = dg.materialize(
        [*LABELLED_ASSETS, judgements_recorded, judge_agreement],
        instance=instance,
        partition_key=R1,
        resources=tiny_resources(tiny_lm_dir, labelling),
    )
    assert result.success
    verdicts = store.round_rows("judgements", R1)
    assert verdicts.height == 4
    by_pair = {r["pair_id"]: r for r in verdicts.iter_rows(named=True)}
    for row in screening.iter_rows(named=True):
        verdict = by_pair[row["pair_id"]]
        if row["route"] == ROUTE_JUDGE:
            assert verdict["source"] == "llm_judge"
            assert verdict["preference"] == row["preference"]
        else:
            assert verdict["source"] == "people"
            assert verdict["preference"] == people[row["pair_id"]]
    assert store.count_rows("reward_models", R1) == 1
    meta = result.asset_materializations_for_node("judgements")[0].metadata
    assert meta["decided_by_people"].value == 2 and meta["decided_by_judge"].value == 2

    # agreement: the calibration pair agrees, the unsure one does not (where the judge decided)
    frame = comparisons(store, labelling.resolution, [R1])
    compared = frame.filter(
        pl.col("judge").is_in(["a", "b", "tie"]) & (pl.col("people") != "unlabelled")
    )
    expected = float((compared["judge"] == compared["people"]).mean())
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "judge_agreement"]
    assert check.metadata["compared_pairs"].value == compared.height >= 1
    assert check.metadata["accuracy"].value == pytest.approx(expected, abs=1e-3)
    assert check.passed == (expected >= 0.9) and check.severity == dg.AssetCheckSeverity.WARN

    # the dataset report of this round draws the agreement and measures self-preference
    release = dg.materialize(
        [preference_dataset, dataset_report],
        instance=instance,
        resources={"store": store, "labelling": labelling},
    )
    assert release.success
    folder = home / store.latest_release()["path"]
    assert (folder / "report" / "agreement.png").exists()
    card = (folder / "README.md").read_text()
    assert "report/agreement.png" in card and "judge, where people labelled too" in card

    monkeypatch.setenv("AUF_LABEL_SOURCE", "judge+people")
    monkeypatch.setenv("AUF_LABEL_PEOPLE_THRESHOLD", "0")
    monkeypatch.setenv("AUF_LABEL_PEOPLE_BUDGET", "1")
    assert cli_main(["labels", "status"]) == 0
    out = capsys.readouterr().out
    assert "judge vs people" in out and f"{expected:.0%}" in out


def test_bad_mixed_settings_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match="sends no pair to people"):
        mixed(people_threshold=0, people_budget=0, calibration_share=0)
    with pytest.raises(ValueError, match="labels on its own"):
        mixed(screening_judge="people")
    with pytest.raises(ValueError, match="unknown label source"):
        mixed(screening_judge="humans")
    assert not LabellingSettings(source="people").mixed and mixed().people


def test_a_round_of_another_source_keeps_no_screening(screened, tmp_path, monkeypatch, tiny_lm_dir):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(screened[0], home)
    monkeypatch.setenv("AUF_HOME", str(home))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", [R1])
    people = LabellingSettings(source="people", settle_seconds=0)
    result = dg.materialize(
        [judge_screening, annotation_batch],
        instance=instance,
        partition_key=R1,
        resources=tiny_resources(tiny_lm_dir, people),
    )
    assert result.success
    store = DuckDBStore()
    assert store.count_rows("judge_screening", R1) == 0
    [status] = label_status(store, people)
    assert status.pairs == 4  # every pair goes to people again


def test_a_label_for_a_pair_the_judge_kept_is_refused(screened, tmp_path, monkeypatch):
    import shutil

    from auf_assets.label_inbox import import_label_file

    home = tmp_path / "home"
    shutil.copytree(screened[0], home)
    monkeypatch.setenv("AUF_HOME", str(home))
    store, labelling = DuckDBStore(), mixed()
    screening = store.round_rows("judge_screening", R1)
    kept = screening.filter(pl.col("route") == ROUTE_JUDGE)["pair_id"][0]
    path = drop(
        SimpleNamespace(labelling=labelling),
        "kept.jsonl",
        [{"pair_id": kept, "round_id": R1, "choice": "A"}],
    )
    outcome = import_label_file(path, store, labelling)
    assert outcome.status == "quarantined"
    assert "never sent out" in " ".join(outcome.problems)
    assert store.count_rows("labels") == 0


@pytest.mark.parametrize("source", ["people", "judge+people"])
def test_a_whole_round_in_one_run_is_refused_before_any_work_when_people_label(source):
    from auf_assets.definitions import defs
    from auf_assets.preflight import run_config_problems

    config = {"resources": {"labelling": {"config": {"source": source}}}}
    [problem] = run_config_problems(defs.resolve_job_def("active_round"), config)
    assert f"label source {source!r} waits for people" in problem and "pair_selection" in problem
    for job in ("pair_selection", "labelled_round"):
        assert run_config_problems(defs.resolve_job_def(job), config) == []
