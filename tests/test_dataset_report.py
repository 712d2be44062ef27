"""The dataset report: each figure's data on hand-made tables, the plots on tiny and odd inputs,
and the `dataset_report` asset on the two real tiny rounds (the images land in the version, the
version still verifies and loads with `datasets`, the card shows them, a push carries them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from fake_hub import FakeHub

from auf_assets.core.dataset_report import (
    FIGURES,
    JUDGE_ON_PEOPLE_PAIRS,
    JUDGE_PEOPLE_SCHEMA,
    REPORT_HEADING,
    agreement_per_round,
    card_with_report,
    drawn_figures,
    figure_path,
    judge_model,
    predicted_gaps,
    report_section,
    report_tables,
)
from auf_assets.core.prompt_matrices import random_pair_gap
from auf_assets.core.release import verify_release
from auf_assets.release import PreferenceDatasetConfig, build_release, hub_dataset
from auf_assets.release_report import PLOTS, dataset_report, write_dataset_report
from resources.hub import HubDataset
from resources.store import DuckDBStore

PNG = b"\x89PNG\r\n\x1a\n"
TOKEN = "hf_SENTINEL_dataset_report_1234567890"
PAIR_COLUMNS = [
    "pair_id",
    "round_id",
    "round_index",
    "prompt_id",
    "label_source",
    "preference",
    "member_a",
    "member_b",
    "model_a",
    "model_b",
    "response_a",
    "response_b",
    "score_a",
    "score_b",
    "confidence",
    "method",
    "mu_a",
    "mu_b",
]


def _pairs(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=PAIR_COLUMNS, orient="row")


def _hand_made() -> tuple[pl.DataFrame, pl.DataFrame]:
    pairs = _pairs(
        [
            # round 1: two decided by the judge, one tie
            ("p1", "r1", 1, "q1", "llm_judge", "a", "x", "y", "mx", "my", "long answer", "no",
             4.0, 2.0, 0.9, "random", 0.0, 3.0),
            ("p2", "r1", 1, "q2", "llm_judge", "b", "x", "z", "mx", "mz", "aa", "bbbb",
             3.0, 3.5, 0.6, "random", 1.0, 1.5),
            ("p3", "r1", 1, "q3", "llm_judge", "tie", "y", "z", "my", "mz", "a", "b",
             3.0, 3.0, None, "random", 2.0, 2.0),
            # round 2: people (no scores, no confidence) and a failure
            ("p4", "r2", 2, "q4", "people", "a", "y", "x", "my", "mx", "abc", "abcdef",
             None, None, None, "dts", 5.0, 1.0),
            ("p5", "r2", 2, "q5", None, "failed", "z", "x", "mz", "mx", "a", "b",
             None, None, None, "dts", None, None),
        ]
    )  # fmt: skip
    completions = pl.DataFrame(
        {
            "round_id": ["r1"] * 6 + ["r2"] * 3,
            "prompt_id": ["q1", "q1", "q1", "q2", "q2", "q3", "q4", "q4", "q5"],
            "completion_id": [f"c{i}" for i in range(9)],
            "mu": [0.0, 3.0, 1.0, 1.0, 1.5, 2.0, 5.0, 1.0, None],
        }
    )
    return pairs, completions


def test_figure_data_on_a_hand_made_release():
    pairs, completions = _hand_made()
    tables = report_tables(pairs, completions)

    wins = {r["member"]: r for r in tables["win_rates"].to_dicts()}
    # decided: p1 x beats y, p2 z beats x, p4 y beats x
    assert {m: (r["wins"], r["appearances"]) for m, r in wins.items()} == {
        "x": (1, 3),
        "y": (1, 2),
        "z": (1, 1),
    }
    assert tables["win_rates"]["member"].to_list() == ["z", "y", "x"]  # best first

    lengths = tables["lengths"].sort("pair_id")
    assert lengths["chosen_length"].to_list() == [11, 4, 3]
    assert lengths["rejected_length"].to_list() == [2, 2, 6]

    gaps = tables["score_gaps"].sort("pair_id")
    assert gaps["pair_id"].to_list() == ["p1", "p2", "p3"]  # people's pair has no scores
    assert gaps["gap"].to_list() == [2.0, 0.5, 0.0]
    assert gaps["outcome"].to_list() == ["decided", "decided", "tie"]

    outcomes = {
        (r["round_id"], r["label_source"], r["outcome"]): r["pairs"]
        for r in tables["outcomes"].to_dicts()
    }
    assert outcomes == {
        ("r1", "llm_judge", "decided"): 2,
        ("r1", "llm_judge", "tie"): 1,
        ("r2", "people", "decided"): 1,
        ("r2", "unrecorded", "failed"): 1,  # a verdict without a recorded source
    }

    confidence = tables["confidence"]
    assert confidence["confidence"].to_list() == [0.9, 0.6]
    assert confidence["round_id"].to_list() == ["r1", "r1"]

    gap = {r["round_id"]: r for r in tables["predicted_gap"].to_dicts()}
    # r1 selected: |0-3|, |1-1.5|, |2-2| -> mean 3.5/3; random: q1 {0,3,1} -> (3+1+2)/3 = 2,
    # q2 {1,1.5} -> 0.5, q3 one response -> no pair; mean over prompts 1.25
    assert gap["r1"]["selected_gap"] == pytest.approx(3.5 / 3)
    assert gap["r1"]["random_gap"] == pytest.approx(1.25)
    assert gap["r1"]["prompts_with_two_scores"] == 2
    assert gap["r2"]["selected_gap"] == pytest.approx(4.0)  # p5 has no means
    assert gap["r2"]["random_gap"] == pytest.approx(4.0)  # q5's one response has no mean
    assert gap["r1"]["method"] == "random" and gap["r2"]["method"] == "dts"

    bias = {r["label_source"]: r for r in tables["length_bias"].to_dicts()}
    assert bias["llm_judge"]["chosen_longer"] == 2 and bias["llm_judge"]["decided"] == 2
    assert bias["people"]["chosen_longer"] == 0
    assert tables["agreement"].height == 0 and tables["self_preference"].height == 0
    assert [f.name for f in drawn_figures(tables)] == [
        f.name for f in FIGURES if f.name != "agreement"
    ]


def test_the_random_pick_gap_is_the_one_selected_pairs_reports():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(4, 5))
    mask = np.ones_like(mu, dtype=bool)
    mask[1, 3:] = False  # a prompt with 3 responses
    mask[2, 1:] = False  # a prompt with one response: no pair
    completions = pl.DataFrame(
        [
            ("r", f"q{i}", f"c{i}-{j}", float(mu[i, j]))
            for i in range(4)
            for j in range(5)
            if mask[i, j]
        ],
        schema=["round_id", "prompt_id", "completion_id", "mu"],
        orient="row",
    )
    pairs = pl.DataFrame(
        {
            "round_id": ["r"] * 4,
            "round_index": [1] * 4,
            "prompt_id": [f"q{i}" for i in range(4)],
            "method": ["dts"] * 4,
            "mu_a": [0.0] * 4,
            "mu_b": [1.0] * 4,
        }
    )
    row = predicted_gaps(pairs, completions).row(0, named=True)
    assert row["random_gap"] == pytest.approx(random_pair_gap(mu, mask))
    assert row["selected_gap"] == 1.0


def test_agreement_per_round_on_a_known_table():
    judge_people = pl.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(7)],
            "round_id": ["r2", "r1", "r1", "r1", "r1", "r2", "r2"],
            "judge": ["rubric:m"] * 7,
            "judge_preference": ["a", "a", "a", "b", "b", "failed", "tie"],
            "people_preference": ["a", "a", "b", "b", "b", "a", "tie"],
            "confidence": [0.9, 0.8, 0.7, 0.6, 0.9, None, None],
        }
    )
    rows = {r["round_id"]: r for r in agreement_per_round(judge_people).to_dicts()}
    # r1: observed 3/4; judge a .5 b .5, people a .25 b .75 -> chance .5, kappa .5
    assert rows["r1"]["pairs"] == 4
    assert rows["r1"]["accuracy"] == 0.75 and rows["r1"]["kappa"] == pytest.approx(0.5)
    # r2: the failed verdict is left out; a/a and tie/tie agree: kappa 1
    assert rows["r2"]["pairs"] == 2 and rows["r2"]["accuracy"] == 1.0
    assert rows["r2"]["kappa"] == pytest.approx(1.0)
    assert agreement_per_round(pl.DataFrame(schema=JUDGE_PEOPLE_SCHEMA)).height == 0


def test_judge_people_rows_give_agreement_length_bias_and_self_preference():
    pairs, completions = _hand_made()
    judge_people = pl.DataFrame(
        {
            "pair_id": ["p1", "p4"],
            "round_id": ["r1", "r2"],
            "judge": [
                "rubric:/models/SmolLM2-135M-Instruct",
                "rubric:/models/SmolLM2-135M-Instruct",
            ],
            "judge_preference": ["a", "b"],
            "people_preference": ["b", "a"],
            "confidence": [0.9, 0.7],
        }
    )
    tables = report_tables(pairs, completions, judge_people)
    assert tables["agreement"]["accuracy"].to_list() == [0.0, 0.0]
    assert tables["agreement"]["round_index"].to_list() == [1, 2]
    judge = tables["length_bias"].filter(pl.col("label_source") == JUDGE_ON_PEOPLE_PAIRS)
    row = judge.row(0, named=True)  # p1: judge chose the longer, people the shorter; p4 both
    assert (row["decided"], row["chosen_longer"], row["longer_better"]) == (2, 2, 0)
    assert row["base_rate"] == 0.0
    preference = tables["self_preference"]
    assert set(preference["member"]) == {"x", "y"}
    assert set(preference["judge_family"]) == {"smollm2"}
    assert judge_model("rubric:/models/SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    section = report_section(drawn_figures(tables), tables)
    assert "![Judge and people agreement per round](report/agreement.png)" in section
    assert "### Self-preference" in section and "### Length bias" in section
    with pytest.raises(ValueError, match="people_preference"):
        report_tables(pairs, completions, judge_people.drop("people_preference"))


def test_every_plot_draws_tiny_and_odd_inputs():
    pairs, completions = _hand_made()
    odd = {
        "full": (pairs, completions),
        "one round, one pair": (pairs.head(1), completions.head(3)),
        "no decided pair": (pairs.filter(pl.col("preference") == "tie"), completions),
        "no confidence, no scores, no means": (
            pairs.with_columns(
                pl.lit(None, pl.Float64).alias(c)
                for c in ("confidence", "score_a", "score_b", "mu_a", "mu_b")
            ),
            completions.with_columns(pl.lit(None, pl.Float64).alias("mu")),
        ),
        "one model": (
            pairs.with_columns(
                pl.lit("solo").alias(c) for c in ("member_a", "member_b", "model_a", "model_b")
            ),
            completions,
        ),
        "nothing": (pairs.head(0), completions.head(0)),
    }
    judge_people = pl.DataFrame(
        {"pair_id": ["p1"], "round_id": ["r1"], "judge": ["rubric:m"], "judge_preference": ["a"]}
        | {"people_preference": ["a"], "confidence": [0.8]}
    )
    for case, (p, c) in odd.items():
        for extra in (None, judge_people):
            tables = report_tables(p, c, extra)
            for name, plot in PLOTS.items():
                png = plot(tables[name])
                assert png.startswith(PNG), (case, name)
    assert set(PLOTS) == {f.name for f in FIGURES}


def test_the_card_section_goes_before_the_limitations_and_replaces_an_earlier_one():
    card = "---\nx: 1\n---\n\n# Title\n\n## Contents\n\nrows\n\n## Limitations\n\n- small\n"
    once = card_with_report(card, f"{REPORT_HEADING}\n\nfirst\n")
    assert once.index(REPORT_HEADING) < once.index("## Limitations")
    assert once.index("## Contents") < once.index(REPORT_HEADING)
    twice = card_with_report(once, f"{REPORT_HEADING}\n\nsecond\n\n### sub\n\nmore\n")
    assert "first" not in twice and twice.count(REPORT_HEADING) == 1
    assert twice.endswith("## Limitations\n\n- small\n") and "### sub" in twice
    assert card_with_report(twice, f"{REPORT_HEADING}\n\nsecond\n\n### sub\n\nmore\n") == twice
    bare = card_with_report("# Title\n", f"{REPORT_HEADING}\n\nx\n")
    assert bare == f"# Title\n\n{REPORT_HEADING}\n\nx\n"


# -- the asset, on the two real tiny rounds -------------------------------------------------------


def _report(store: DuckDBStore) -> dg.ExecuteInProcessResult:
    return dg.materialize([dataset_report], resources={"store": store}, raise_on_error=False)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            return event.step_failure_data.error.message
    return ""


@pytest.fixture()
def home(home, tmp_path, monkeypatch) -> Path:
    """A copy of the shared two-round home: the report rewrites versions and records pushes,
    which other modules' tests of the same home must not see."""
    copy = tmp_path / "own-home"
    shutil.copytree(home, copy)
    monkeypatch.setenv("AUF_HOME", str(copy))
    return copy


def test_the_report_lands_in_the_version_which_verifies_loads_and_shows_it(home, tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    store = DuckDBStore()
    built = build_release(store, PreferenceDatasetConfig(test_fraction=0.5), log=lambda _: None)
    folder = built["folder"]
    result = _report(store)
    assert result.success, _failure(result)
    meta = result.asset_materializations_for_node("dataset_report")[0].metadata
    drawn = [f for f in FIGURES if f.name != "agreement"]  # no pair has people's labels too
    for figure in drawn:
        assert (folder / figure_path(figure)).read_bytes().startswith(PNG)
        assert meta[figure.name].value.startswith(f"![{figure.title}](data:image/png;base64,")
    assert sorted(p.name for p in (folder / "report").iterdir()) == sorted(
        f"{f.name}.png" for f in drawn
    )
    assert meta["dagster/row_count"].value == sum(built["rows"]["default"].values())
    assert meta["rows_per_figure"].value["win_rates"] >= 2  # the tiny members
    # the rubric judge's confidence of every decided verdict (read with the release's pairs)
    assert meta["rows_per_figure"].value["confidence"] == meta["dagster/row_count"].value

    manifest = verify_release(folder)  # every file, the images too, matches the manifest
    assert manifest["report"] == [figure_path(f) for f in sorted(drawn, key=lambda f: f.name)]
    assert set(manifest["report"]) <= set(manifest["files"])
    assert manifest["rows"] == built["rows"]
    assert store.latest_release()["manifest_sha256"] == meta["manifest_sha256"].value

    card = (folder / "README.md").read_text()
    for figure in drawn:
        assert f"![{figure.title}]({figure_path(figure)})" in card  # relative: renders on the Hub
    assert card.index("## Report") < card.index("## Limitations")
    assert "| llm_judge |" in card.split("### Length bias", 1)[1]
    assert DatasetCard.load(folder / "README.md").data.to_dict()["configs"]  # YAML intact

    for config, splits in manifest["rows"].items():  # the images are no split of any config
        loaded = datasets.load_dataset(str(folder), config, cache_dir=str(tmp_path / "cache"))
        assert {s: loaded[s].num_rows for s in loaded} == splits
    whole = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert "image" not in whole["train"].column_names

    # Drawing again gives the same bytes: the version, and so its manifest, does not change.
    again = _report(store)
    assert again.success
    assert (
        again.asset_materializations_for_node("dataset_report")[0].metadata["manifest_sha256"]
        == meta["manifest_sha256"]
    )
    assert (folder / "README.md").read_text() == card


def test_a_push_carries_the_report_and_drops_it_when_a_version_has_none(home):
    store = DuckDBStore()
    build_release(store, PreferenceDatasetConfig(), log=lambda _: None)
    assert _report(store).success
    folder = store.root / store.latest_release()["path"]
    with FakeHub({TOKEN: {"me"}}) as fake:
        hub = HubDataset(repo_id="me/report", token=TOKEN, endpoint=fake.url, retry_backoff_s=0.01)
        pushed = dg.materialize([hub_dataset], resources={"store": store, "hub": hub})
        assert pushed.success
        remote = fake.files("me/report")
        images = {p for p in remote if p.startswith("report/")}
        assert images and all(remote[p] == (folder / p).read_bytes() for p in images)
        assert "](report/win_rates.png)" in remote["README.md"].decode()

        build_release(store, PreferenceDatasetConfig(), log=lambda _: None)  # no report yet
        assert dg.materialize([hub_dataset], resources={"store": store, "hub": hub}).success
        assert not [p for p in fake.files("me/report") if p.startswith("report/")]


def test_agreement_is_drawn_when_judge_and_people_labelled_the_same_pairs(home):
    store = DuckDBStore()
    build_release(store, PreferenceDatasetConfig(), log=lambda _: None)
    verdicts = store.sql_for_tests(
        "SELECT pair_id, round_id, labeller AS judge, preference AS judge_preference, confidence "
        "FROM judgements WHERE preference IN ('a', 'b') ORDER BY pair_id"
    )
    flip = {"a": "b", "b": "a"}
    judge_people = verdicts.with_columns(  # people disagree on every third pair
        pl.Series(
            "people_preference",
            [flip[p] if i % 3 == 0 else p for i, p in enumerate(verdicts["judge_preference"])],
        )
    )
    report = write_dataset_report(store, judge_people, log=lambda _: None)
    folder = report["folder"]
    assert (folder / "report/agreement.png").read_bytes().startswith(PNG)
    agreement = report["tables"]["agreement"]
    assert agreement["pairs"].sum() == verdicts.height
    agreed = (agreement["accuracy"] * agreement["pairs"]).sum()
    assert agreed == pytest.approx(verdicts.height - len(range(0, verdicts.height, 3)))
    card = (folder / "README.md").read_text()
    assert "![Judge and people agreement per round](report/agreement.png)" in card
    assert "### Self-preference" in card and "| tiny-llama0 | tiny-0.0 | tiny-llama0 |" in card
    assert "/tmp/" not in card  # models without this machine's directories
    preference = report["tables"]["self_preference"]
    assert preference["same_family"].all()  # the tiny judge wrote every pool response
    verify_release(folder)


def test_a_report_of_a_version_whose_verdicts_changed_fails_and_changes_nothing(
    home, tmp_path, monkeypatch
):
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    monkeypatch.setenv("AUF_HOME", str(copy))
    store = DuckDBStore()
    built = build_release(store, PreferenceDatasetConfig(), log=lambda _: None)
    before = json.loads((built["folder"] / "manifest.json").read_text())
    rows = store.round_rows("judgements", "round-0001")
    decided = rows.filter(pl.col("preference").is_in(["a", "b"]))["pair_id"][0]
    store.replace_round(
        "judgements",
        "round-0001",
        rows.with_columns(
            pl.when(pl.col("pair_id") == decided)
            .then(pl.lit("tie"))
            .otherwise(pl.col("preference"))
            .alias("preference")
        ),
    )
    result = _report(store)
    assert not result.success
    assert "changed since it was built (1 labelled pairs differ)" in _failure(result)
    assert json.loads((built["folder"] / "manifest.json").read_text()) == before
    assert not (built["folder"] / "report").exists()


def test_no_version_built_fails_clearly(auf_home):
    result = _report(DuckDBStore())
    assert not result.success
    assert "no dataset version is built yet" in _failure(result)


def test_figures_are_named_once_and_their_paths_are_relative():
    names = [f.name for f in FIGURES]
    assert len(set(names)) == len(names)
    assert all(not Path(figure_path(f)).is_absolute() for f in FIGURES)


def test_the_console_names_the_reports_figures():
    from auf_assets.cli.console import _stage_note

    note = _stage_note(
        "dataset_report", {"version": "rounds-0001-0002", "rows_per_figure": {"a": 1}}
    )
    assert note == "rounds-0001-0002: 1 figures in report/"
