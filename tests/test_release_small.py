"""Small releases load, and the card says only what is known.

Releases of 1, 2, 3 and 8 prompts are built from the two real tiny rounds (a copy of the home whose
rounds keep only the first prompts), at test fractions that leave the test split empty, fill
both splits, or leave the train split empty; every config and split of every version is loaded
with `datasets.load_dataset` from the version folder, offline. The card is read as a person
reads it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
import pytest
from fake_hub import FakeHub

from auf_assets.core.release_card import parameter_count
from auf_assets.release import (
    PreferenceDatasetConfig,
    build_release,
    hub_dataset,
    preference_dataset,
    preference_dataset_valid,
)
from resources.hub import HubDataset
from resources.store import DuckDBStore

TOKEN = "hf_SENTINEL_small_releases_0987654321"


@pytest.fixture()
def home_with(home, tmp_path, monkeypatch):
    """`make(n)`: a copy of the two-round home whose rounds keep only their first n prompts."""

    def make(n: int) -> DuckDBStore:
        copy = tmp_path / f"home-{n}"
        shutil.copytree(home, copy)
        monkeypatch.setenv("AUF_HOME", str(copy))
        store = DuckDBStore()
        keep = store.sql_for_tests("SELECT DISTINCT prompt_id FROM judgements ORDER BY prompt_id")
        keep = keep["prompt_id"][:n]
        for round_id in ("round-0001", "round-0002"):
            for table in ("judgements", "completions"):
                rows = store.round_rows(table, round_id)
                store.replace_round(table, round_id, rows.filter(pl.col("prompt_id").is_in(keep)))
        return store

    return make


def _load_every_config(folder: Path, cache: Path) -> dict[str, dict[str, int]]:
    """Rows per config and split as `datasets` reads them from the folder (offline)."""
    import datasets

    manifest = json.loads((folder / "manifest.json").read_text())
    loaded: dict[str, dict[str, int]] = {}
    for config, splits in manifest["rows"].items():
        whole = datasets.load_dataset(str(folder), config, cache_dir=str(cache))
        loaded[config] = {split: whole[split].num_rows for split in whole}
        for split in splits:  # each split on its own, as `split="train"` asks
            one = datasets.load_dataset(str(folder), config, split=split, cache_dir=str(cache))
            assert one.num_rows == splits[split]
    return loaded


@pytest.mark.parametrize("prompts", [1, 2, 3, 8])
def test_small_releases_load_every_config_and_split(home_with, tmp_path, prompts):
    store = home_with(prompts)
    seen_empty = set()
    for fraction in (0.1, 0.5, 0.9):
        built = build_release(
            store, PreferenceDatasetConfig(test_fraction=fraction), log=lambda _: None, warn=print
        )
        folder = built["folder"]
        manifest = json.loads((folder / "manifest.json").read_text())
        loaded = _load_every_config(folder, tmp_path / f"cache-{fraction}")
        assert loaded == manifest["rows"] == built["rows"]
        assert sum(loaded["default"].values()) == prompts  # one labelled pair per prompt
        assert sum(loaded["completions"].values()) == prompts
        declared = {
            c["config_name"]: [f["split"] for f in c["data_files"]]
            for c in _card_meta(folder)["configs"]
        }
        assert declared == {c: list(s) for c, s in loaded.items()}
        assert all(pq.read_metadata(p).num_rows for p in folder.rglob("*.parquet"))
        missing = {"train", "test"} - set(loaded["default"])
        seen_empty |= missing
        # an empty split is said, in the build's warnings, the manifest and the card
        assert len(built["warnings"]) == len(missing) == len(manifest["warnings"])
        card = (folder / "README.md").read_text()
        assert "nan" not in card.lower().split()
        if "test" in missing:
            assert "no held-out pairs" in built["warnings"][-1]
            assert "There is no `test` split, so no held-out pairs" in card
        if "train" in missing:
            assert built["warnings"][0].startswith("the train split")
            assert "under test_fraction 0.9" in built["warnings"][0]
        checks = dg.materialize(
            [preference_dataset, preference_dataset_valid],
            resources={"store": store},
            run_config={"ops": {"preference_dataset": {"config": {"test_fraction": fraction}}}},
        ).get_asset_check_evaluations()
        assert [c.passed for c in checks] == [True]
    assert "test" in seen_empty  # the case of the issue: 0.1 of a few prompts is no prompt


def _card_meta(folder: Path) -> dict:
    from huggingface_hub import DatasetCard

    return DatasetCard.load(folder / "README.md").data.to_dict()


def test_a_push_after_the_test_split_went_away_publishes_a_loadable_dataset(home, tmp_path):
    store = DuckDBStore()
    with FakeHub({TOKEN: {"me"}}) as fake:
        hub = HubDataset(repo_id="me/small", token=TOKEN, endpoint=fake.url, retry_backoff_s=0.01)
        for fraction in (0.5, 0.1):  # both splits first, then no test split
            build_release(
                store, PreferenceDatasetConfig(test_fraction=fraction), log=lambda _: None
            )
            result = dg.materialize(
                [hub_dataset], resources={"store": store, "hub": hub}, raise_on_error=False
            )
            assert result.success
        published = tmp_path / "published"
        for name, data in fake.files("me/small").items():
            (published / name).parent.mkdir(parents=True, exist_ok=True)
            (published / name).write_bytes(data)
    assert not list(published.glob("*/test-*"))  # the earlier version's test shards are gone
    loaded = _load_every_config(published, tmp_path / "cache")
    assert loaded == {"default": {"train": 8}, "trl": {"train": 8}, "completions": {"train": 8}}


# -- the card -------------------------------------------------------------------------------------


def _card(store: DuckDBStore, **config) -> str:
    built = build_release(store, PreferenceDatasetConfig(**config), log=lambda _: None)
    return (built["folder"] / "README.md").read_text()


def test_without_a_price_table_the_card_says_nothing_about_dollars_or_gpu_time(home, monkeypatch):
    monkeypatch.delenv("AUF_PRICES", raising=False)
    card = _card(DuckDBStore())
    assert "### What it cost" in card and "| completions |" in card  # tokens and requests: known
    assert "$" not in card and "publisher" not in card
    assert "GPU-hours" not in card and "0.000" not in card  # the tiny rounds ran on CPU


def test_a_price_table_prices_the_card_and_an_unreadable_one_is_left_out(
    home, monkeypatch, tmp_path
):
    prices = tmp_path / "team-prices.yaml"
    prices.write_text('models:\n  "*": {input: 1000.0, output: 2000.0}\n', encoding="utf-8")
    monkeypatch.setenv("AUF_PRICES", str(prices))
    card = _card(DuckDBStore())
    assert "| $ |" in card and "at the prices of `team-prices.yaml`" in card
    assert str(tmp_path) not in card  # the table's name, not where it lives on this machine

    # Saved by an editor as UTF-16 without a byte-order mark: no text encoding can be told.
    prices.write_bytes(prices.read_text().encode("utf-16-le"))
    warnings: list[str] = []
    built = build_release(
        DuckDBStore(), PreferenceDatasetConfig(), log=lambda _: None, warn=warnings.append
    )
    assert any("team-prices.yaml" in w and "cannot be read" in w for w in warnings)
    assert "$" not in (built["folder"] / "README.md").read_text()


def test_the_card_names_the_system_prompts_limitations_and_the_method_to_cite(home):
    import datasets

    store = DuckDBStore()
    built = build_release(store, PreferenceDatasetConfig(), log=lambda _: None)
    card = (built["folder"] / "README.md").read_text()
    principles = store.sql_for_tests("SELECT principle, count(*) AS n FROM completions GROUP BY 1")
    assert "system prompt that stresses one principle" in card
    for principle, n in principles.iter_rows():
        assert f"{principle.replace('_', ' ')} ({n} response" in card
    responses = datasets.load_dataset(str(built["folder"]), "completions")["train"]
    assert all(c["system_prompt"] for row in responses for c in row["completions"])

    limitations = card.split("## Limitations", 1)[1].split("\n## ", 1)[0]
    # the tiny model judged and also answered in the pool
    assert "`tiny-llama0` also wrote responses in the pool (member(s) tiny-0.0, tiny-0.8" in card
    assert "opinion of the model `tiny-llama0`, not of people" in limitations
    assert "Built from 2 rounds" in limitations and "small dataset" in limitations

    citation = card.split("## Citation", 1)[1]
    assert "ActiveUltraFeedback: Efficient Preference Data Generation using Active Learning" in (
        citation
    )
    assert "arXiv 2603.09692" in citation and "ICML 2026" in citation
    assert "2503.22137" not in citation  # SHARP was not used for these pairs
    assert "/tmp/" not in card  # no directory of this machine (the tiny model lives in one)


def test_a_one_round_card_title_names_the_round_once(home):
    card = _card(DuckDBStore(), rounds=["round-0001"])
    assert "# Active preference data, round-0001\n" in card
    assert "round-0001 to round-0001" not in card
    assert "over 1 round: round-0001." in card and "Built from one round" in card


def test_judge_sizes_are_read_from_model_names():
    assert parameter_count("smollm2-135m-instruct") == pytest.approx(1.35e8)
    assert parameter_count("HuggingFaceTB/SmolLM2-135M-Instruct") == pytest.approx(1.35e8)
    assert parameter_count("Qwen/Qwen3-32B") == pytest.approx(3.2e10)
    assert parameter_count("meta-llama/Llama-3.1-8B-Instruct") == pytest.approx(8e9)
    assert parameter_count("tiny-llama0") is None
    assert parameter_count("gpt-4o-mini") is None
