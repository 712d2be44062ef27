"""The released dataset: built from real rounds (tiny models), loaded with `datasets`, trained on
with TRL, and pushed with the real `huggingface_hub` client to a Hub served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from fake_hub import FakeHub

from auf_assets.core.release import in_test_split, to_trl_example, version_name
from auf_assets.prompts import prompt_pool
from auf_assets.release import (
    PreferenceDatasetConfig,
    build_release,
    hub_dataset,
    preference_dataset,
    preference_dataset_valid,
)
from resources.hub import HubDataset
from resources.store import DuckDBStore

TOKEN = "hf_SENTINEL_never_in_logs_1234567890"


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_dataset_loads_with_datasets_in_the_preference_layout(home):
    import datasets

    store = DuckDBStore()
    built = build_release(store, PreferenceDatasetConfig(test_fraction=0.25), log=lambda _: None)
    folder = built["folder"]
    assert built["version"] == "rounds-0001-0002"
    assert (folder / "README.md").is_file() and (folder / "manifest.json").is_file()

    pairs = datasets.load_dataset(str(folder))
    assert set(pairs) == {"train", "test"}
    labelled = store.sql_for_tests(
        "SELECT count(*) AS n FROM judgements WHERE preference IN ('a','b')"
    )
    assert pairs["train"].num_rows + pairs["test"].num_rows == labelled["n"][0]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {s: pairs[s].num_rows for s in pairs} == manifest["rows"]["default"]
    row = pairs["train"][0]
    for column in (
        "prompt_id",
        "prompt",
        "chosen",
        "rejected",
        "messages",
        "score_chosen",
        "score_rejected",
        "pair_id",
        "round",
        "method",
        "chosen_model",
        "chosen_sampling",
        "rejected_member",
        "label_source",
        "labeller",
        "chosen_aspect_scores",
        "chosen_reward_mean",
        "rejected_reward_std",
        "labelled_at",
    ):
        assert column in row, column
    assert [m["role"] for m in row["chosen"]] == ["user", "assistant"]
    assert row["chosen"][0]["content"] == row["prompt"] and row["messages"] == row["chosen"]
    assert row["score_chosen"] > row["score_rejected"]
    assert json.loads(row["chosen_sampling"])["max_new_tokens"] == 6
    assert set(row["chosen_aspect_scores"]) == {
        "instruction_following",
        "honesty",
        "truthfulness",
        "helpfulness",
    }

    trl = datasets.load_dataset(str(folder), "trl")
    assert trl["train"].num_rows == pairs["train"].num_rows
    first = trl["train"][0]
    assert [m["role"] for m in first["prompt"]] == ["user"]
    assert [m["role"] for m in first["chosen"]] == ["assistant"]
    converted = to_trl_example(pairs["train"][0])
    assert converted == {k: first[k] for k in ("prompt", "chosen", "rejected")}

    responses = datasets.load_dataset(str(folder), "completions")
    n_prompts = store.sql_for_tests("SELECT count(*) AS n FROM round_prompts")["n"][0]
    assert responses["train"].num_rows + responses["test"].num_rows == n_prompts
    one = responses["train"][0]
    assert len(one["completions"]) == 3  # three pool members in the tiny rounds
    judged = [c for c in one["completions"] if c["judge_score"] is not None]
    assert {c["completion_id"] for c in judged} == set(one["selected"])


def test_the_same_rounds_give_byte_identical_files(home):
    store = DuckDBStore()
    first = build_release(store, PreferenceDatasetConfig(), log=lambda _: None)
    before = _files(first["folder"])
    second = build_release(store, PreferenceDatasetConfig(), log=lambda _: None)
    assert _files(second["folder"]) == before
    assert first["manifest_sha256"] == second["manifest_sha256"]
    manifest = json.loads(before["manifest.json"])
    for name, info in manifest["files"].items():
        assert hashlib.sha256(before[name]).hexdigest() == info["sha256"]


def test_split_is_by_prompt_and_names_are_configurable(home):
    store = DuckDBStore()
    config = PreferenceDatasetConfig(
        test_fraction=0.5, train_split="train_prefs", test_split="test_prefs", rounds=["round-0001"]
    )
    built = build_release(store, config, log=lambda _: None)
    assert built["version"] == "rounds-0001-0001"
    folder = built["folder"]
    train = pl.read_parquet(folder / "data" / "train_prefs-00000-of-00001.parquet")
    test = pl.read_parquet(folder / "data" / "test_prefs-00000-of-00001.parquet")
    assert set(train["round"]) | set(test["round"]) == {"round-0001"}
    assert not set(train["prompt_id"]) & set(test["prompt_id"])
    # The split is a function of the prompt id alone: it never depends on what else is released.
    expected = in_test_split(pl.concat([train, test])["prompt_id"], 0.5)
    assert expected.sum() == test.height


def test_ties_failures_and_unlabelled_pairs_are_left_out_and_counted(home):
    store = DuckDBStore()
    verdicts = store.round_rows("judgements", "round-0002").sort("pair_id")
    changed = verdicts.with_columns(
        preference=pl.Series(
            ["tie", "failed", "unlabelled"] + verdicts["preference"][3:].to_list()
        ),
    ).with_columns(
        chosen_completion_id=pl.when(pl.col("preference").is_in(["a", "b"])).then(
            "chosen_completion_id"
        ),
    )
    store.replace_round("judgements", "round-0002", changed)
    try:
        built = build_release(store, PreferenceDatasetConfig(), log=lambda _: None)
        assert built["left_out"] == {"tie": 1, "failed": 1, "unlabelled": 1}
        released = sum(built["rows"]["default"].values())
        labelled = store.sql_for_tests(
            "SELECT count(*) AS n FROM judgements WHERE preference IN ('a','b')"
        )
        assert released == labelled["n"][0]
        card = (built["folder"] / "README.md").read_text()
        assert "1 tie, 1 where the judge failed, 1 not labelled" in card
    finally:
        store.replace_round("judgements", "round-0002", verdicts)


def test_card_metadata_and_body_come_from_the_lineage(home):
    from huggingface_hub import DatasetCard

    store = DuckDBStore()
    config = PreferenceDatasetConfig(license="mit", language=["en"], repo_id="me/prefs")
    folder = build_release(store, config, log=lambda _: None)["folder"]
    card = DatasetCard.load(folder / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "mit" and meta["language"] == ["en"]
    assert meta["task_categories"] == ["text-generation"]
    assert {"dpo", "preference", "active-learning"} <= set(meta["tags"])
    assert meta["size_categories"] == ["n<1K"]
    assert {c["config_name"] for c in meta["configs"]} == {"default", "trl", "completions"}
    body = card.text
    assert "round-0001, round-0002" in body
    assert "tiny-0.8" in body and "drts" in body  # pool members and the acquisition method
    assert "rubric:" in body and "instruction_following" in body  # the judge and its rubric
    assert 'load_dataset("me/prefs", "trl")' in body
    assert "No license" not in body
    # The ledger of the released rounds: every pool member's and the judge's requests.
    assert "### What it cost" in body and "| completions |" in body and "| judgements |" in body

    bare = build_release(store, PreferenceDatasetConfig(), log=lambda _: None)["folder"]
    bare_meta = DatasetCard.load(bare / "README.md").data.to_dict()
    assert "license" not in bare_meta and "language" not in bare_meta  # unknown: not invented
    assert "No license was chosen" in (bare / "README.md").read_text()


def test_a_dpo_trainer_step_runs_on_the_trl_config(home, tiny_lm_dir, tmp_path):
    import datasets
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    folder = build_release(DuckDBStore(), PreferenceDatasetConfig(), log=lambda _: None)["folder"]
    train = datasets.load_dataset(str(folder), "trl")["train"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tokenizer.padding_side = "left"
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_length=128,
    )
    trainer = DPOTrainer(
        model=str(tiny_lm_dir),
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    result = trainer.train()
    assert result.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(loss == loss for loss in losses)  # finite, not NaN


def test_preference_dataset_asset_and_its_check(home):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [preference_dataset, preference_dataset_valid],
        instance=instance,
        resources={"store": DuckDBStore()},
        run_config={"ops": {"preference_dataset": {"config": {"test_fraction": 0.25}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("preference_dataset")[0].metadata
    assert meta["version"].value == "rounds-0001-0002"
    assert sum(meta["rows_per_split"].value.values()) == meta["dagster/row_count"].value
    assert meta["per_round"].value.startswith("![pairs and score gap per round](data:image/png")
    assert set(meta["round_lineage"].value) == {"round-0001", "round-0002"}
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]


def test_unknown_rounds_fail_clearly_and_keep_the_stored_version(home):
    store = DuckDBStore()
    good = build_release(store, PreferenceDatasetConfig(), log=lambda _: None)
    before = _files(good["folder"])
    with pytest.raises(dg.Failure, match=r"rounds without judgements cannot be released.*0009"):
        dg.materialize(
            [preference_dataset],
            resources={"store": store},
            run_config={"ops": {"preference_dataset": {"config": {"rounds": ["round-0009"]}}}},
        )
    assert _files(good["folder"]) == before


def test_version_names():
    assert version_name(["round-0001", "round-0002"], [1, 2]) == "rounds-0001-0002"
    gap = version_name(["round-0001", "round-0003"], [1, 3])
    assert gap.startswith("rounds-0001-0003-n2-")


# -- publishing ---------------------------------------------------------------------------------


def _hub(fake: FakeHub, **kw) -> HubDataset:
    return HubDataset(
        repo_id=kw.pop("repo_id", "me/prefs"),
        token=kw.pop("token", TOKEN),
        endpoint=fake.url,
        retry_backoff_s=0.01,
        **kw,
    )


def _push(fake: FakeHub, instance=None, **kw) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [hub_dataset],
        instance=instance or dg.DagsterInstance.ephemeral(),
        resources={"store": DuckDBStore(), "hub": _hub(fake, **kw)},
        raise_on_error=False,
    )


def _failure(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            return event.step_failure_data.error.message
    return ""


def test_push_is_one_commit_per_version_and_unchanged_content_makes_none(home):
    store = DuckDBStore()
    # Small shards first, so that the next version (one shard each) must delete the others.
    built = build_release(store, PreferenceDatasetConfig(max_shard_mb=0.002), log=lambda _: None)
    local = _files(built["folder"])
    assert sum(p.startswith("data/train-") for p in local) > 1
    with FakeHub({TOKEN: {"me"}}) as fake:
        result = _push(fake)
        assert result.success, _failure(result)
        meta = result.asset_materializations_for_node("hub_dataset")[0].metadata
        assert meta["new_commit"].value is True
        assert meta["tag"].value == "rounds-0001-0002"
        commits = fake.commits("me/prefs")
        assert len(commits) == 2  # the repo's first commit + this version, in ONE commit
        assert commits[-1].oid == meta["commit"].value
        assert commits[-1].title == "rounds-0001-0002: " + (
            f"{sum(built['rows']['default'].values())} preference pairs from 2 round(s)"
        )
        remote = fake.files("me/prefs")
        assert {k: v for k, v in remote.items() if k != ".gitattributes"} == local
        assert fake.repos["me/prefs"].private is True
        assert fake.repos["me/prefs"].tags == {"rounds-0001-0002": commits[-1].oid}
        assert fake.validated and fake.validated[-1]["configs"]

        again = _push(fake)
        assert again.success
        assert (
            again.asset_materializations_for_node("hub_dataset")[0].metadata["new_commit"].value
            is False
        )
        assert len(fake.commits("me/prefs")) == 2
        assert "commit" not in fake.routes()[len(fake.routes()) - 4 :]

        # The next version replaces every shard of the last one, stale ones deleted, in one commit.
        smaller = build_release(
            store, PreferenceDatasetConfig(rounds=["round-0001"]), log=lambda _: None
        )
        third = _push(fake)
        assert third.success
        assert len(fake.commits("me/prefs")) == 3
        files = fake.files("me/prefs")
        files.pop(".gitattributes")
        assert files == _files(smaller["folder"])
        assert fake.repos["me/prefs"].tags["rounds-0001-0001"] == fake.commits("me/prefs")[-1].oid
        pushed = store.sql_for_tests(
            "SELECT version, new_commit FROM hub_pushes ORDER BY pushed_at"
        )
        assert pushed["new_commit"].to_list() == [True, False, True]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"token": "hf_wrong"}, "rejected the token (401)"),
        ({"repo_id": "someone-else/prefs"}, "no write access to someone-else/prefs (403)"),
        ({"repo_id": "not a repo id"}, "repo id 'not a repo id' is malformed"),
        ({"repo_id": "just-a-name"}, "expected namespace/name"),
        ({"token": None}, "no Hugging Face token: set the HF_TOKEN"),
        ({"max_file_bytes": 10}, "over the 10-byte limit for one file"),
    ],
)
def test_push_errors_are_clear_and_lose_nothing(home, setup, message):
    store = DuckDBStore()
    built = build_release(store, PreferenceDatasetConfig(), log=lambda _: None)
    before = _files(built["folder"])
    with FakeHub({TOKEN: {"me"}}) as fake:
        result = _push(fake, **setup)
        assert not result.success
        assert message in _failure(result)
        assert not any(r["route"] == "commit" for r in fake.requests)
    assert _files(built["folder"]) == before


def test_server_errors_are_retried_then_fail_clearly_and_a_rerun_is_safe(home):
    build_release(DuckDBStore(), PreferenceDatasetConfig(), log=lambda _: None)
    with FakeHub({TOKEN: {"me"}}) as fake:
        fake.fail("commit", 500, times=2)  # two failures, then it goes through
        first = _push(fake, max_retries=3)
        assert first.success, _failure(first)
        assert len(fake.commits("me/prefs")) == 2

        fake.repos.clear()
        fake.fail("commit", 503, times=50)
        down = _push(fake, max_retries=2)
        assert not down.success
        assert "after 3 tries" in _failure(down) and "run the push again" in _failure(down)
        assert len(fake.commits("me/prefs")) == 1  # nothing half-pushed: only the repo's start

        fake.failures.clear()
        rerun = _push(fake)
        assert rerun.success
        assert len(fake.commits("me/prefs")) == 2


def test_the_token_never_appears_in_logs_metadata_or_errors(home, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    build_release(DuckDBStore(), PreferenceDatasetConfig(), log=lambda _: None)
    instance = dg.DagsterInstance.ephemeral()
    with FakeHub({TOKEN: {"me"}}) as fake:
        ok = _push(fake, instance=instance)
        assert ok.success
        fake.repos.clear()
        fake.fail("commit", 500, times=50)
        failed = _push(fake, instance=instance, max_retries=1)
        assert not failed.success
        forbidden = _push(fake, instance=instance, repo_id="other/prefs")
        assert not forbidden.success
        assert all(r["has_token"] for r in fake.requests)  # it was sent, to the Hub only
    texts = [caplog.text, *capsys.readouterr()]
    for result in (ok, failed, forbidden):
        for event in instance.all_logs(result.run_id):
            texts.append(str(event))
            if event.dagster_event is not None:
                texts.append(repr(event.dagster_event.event_specific_data))
        run = instance.get_run_by_id(result.run_id)
        texts += [json.dumps(run.run_config, default=str), str(run)]
    assert all(TOKEN not in text for text in texts)


def test_dry_run_plan_needs_no_network_and_lists_what_would_be_pushed(home):
    built = build_release(DuckDBStore(), PreferenceDatasetConfig(), log=lambda _: None)
    plan = HubDataset(repo_id="me/prefs", endpoint="http://127.0.0.1:9").plan(built["folder"])
    assert plan["repo_id"] == "me/prefs" and plan["version"] == "rounds-0001-0002"
    assert set(plan["files"]) == set(_files(built["folder"]))


# -- publishing after each round, and the command line ---------------------------------------


def test_rounds_request_a_release_after_each_finished_round_when_enabled(auf_home):
    from resources.labelling import LabellingSettings
    from sensors.rounds import next_round, nightly_round

    store = DuckDBStore()
    with dg.instance_for_test() as instance:
        dg.materialize([prompt_pool], instance=instance, resources={"store": store})
        instance.add_dynamic_partitions("rounds", ["round-0001"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization("reward_model", partition="round-0001")
        )

        def sensor(settings):
            ctx = dg.build_sensor_context(
                instance=instance, resources={"store": store, "labelling": settings}
            )
            return next_round(ctx)

        off = sensor(LabellingSettings())
        assert [r.job_name for r in off.run_requests] == ["active_round"]
        on = sensor(LabellingSettings(publish_after_round=True, train_after_round=True))
        release = [r for r in on.run_requests if r.job_name == "dataset_release"]
        assert [r.run_key for r in release] == ["release-round-0001"]
        train = [r for r in on.run_requests if r.job_name == "policy_training"]
        assert [(r.run_key, r.partition_key) for r in train] == [("train-round-0001", "round-0001")]

        with dg.build_schedule_context(
            instance=instance,
            resources={"store": store, "labelling": LabellingSettings(publish_after_round=True)},
            scheduled_execution_time=datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc),
        ) as context:
            requests = nightly_round(context)
        assert [r.partition_key for r in requests] == ["round-0002", None]
        assert set(requests[1].asset_selection) == {
            dg.AssetKey("preference_dataset"),
            dg.AssetKey("dataset_report"),
            dg.AssetKey("hub_dataset"),
        }
        assert requests[1].run_key == "release-round-0001"

        # The round trained again (late labels): published and trained on again, once.
        instance.report_runless_asset_event(
            dg.AssetMaterialization("reward_model", partition="round-0001")
        )
        again = sensor(LabellingSettings(publish_after_round=True, train_after_round=True))
        keys = sorted(r.run_key for r in again.run_requests if r.job_name != "active_round")
        assert len(keys) == 2 and all(k.rsplit("-", 1)[1].isdigit() for k in keys)
        assert keys[0].startswith("release-round-0001-") and keys[1].startswith("train-round-0001-")


def _cli(monkeypatch, home: Path, *argv: str) -> int:
    from auf_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))  # restored after the test
    return main(list(argv))


def test_auf_export_writes_exactly_what_would_be_pushed(home, monkeypatch, tmp_path, capsys):
    out = tmp_path / "export"
    assert _cli(monkeypatch, home, "export", "--out", str(out), "--split-names", "h4") == 0
    printed = capsys.readouterr().out
    assert "rounds-0001-0002" in printed and "train_prefs" in printed
    built = _files(_built_folder_of(home))
    assert _files(out) == built
    # Exporting again over an earlier export is fine; over some other folder it is refused.
    assert _cli(monkeypatch, home, "export", "--out", str(out)) == 0
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff")
    assert _cli(monkeypatch, home, "export", "--out", str(other)) == 2  # refused before building
    assert (other / "cat.jpg").read_bytes() == b"\xff"


def _built_folder_of(home: Path) -> Path:
    store = DuckDBStore()
    return store.root / store.latest_release()["path"]


def test_auf_publish_pushes_and_dry_run_sends_nothing(home, monkeypatch, capsys):
    with FakeHub({TOKEN: {"me"}}) as fake:
        args = ("publish", "--repo", "me/cli-prefs", "--endpoint", fake.url)
        assert _cli(monkeypatch, home, *args, "--dry-run") == 0
        assert fake.requests == []
        assert "nothing was sent" in capsys.readouterr().out

        monkeypatch.delenv("HF_TOKEN", raising=False)
        assert _cli(monkeypatch, home, *args) == 2
        assert "no Hugging Face token" in capsys.readouterr().err
        assert _cli(monkeypatch, home, "publish", "--repo", "bad id") == 2

        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert _cli(monkeypatch, home, *args, "--public") == 0
        printed = capsys.readouterr()
        assert "rounds-0001-0002: pushed" in printed.out
        assert fake.repos["me/cli-prefs"].private is False
        assert len(fake.commits("me/cli-prefs")) == 2
        assert _cli(monkeypatch, home, *args) == 0
        assert "no new commit" in capsys.readouterr().out
        assert TOKEN not in printed.out + printed.err
