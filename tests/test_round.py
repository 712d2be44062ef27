"""A full active round materialised with Dagster on an ephemeral instance."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from auf_assets.checks import ROUND_CHECKS
from auf_assets.definitions import defs
from auf_assets.prompts import prompt_pool
from auf_assets.round import ROUND_ASSETS
from resources import DuckDBStore, FeatureEncoder, GenerationEngine, RubricJudge
from resources.label_source import label_source
from resources.labelling import LabellingSettings
from resources.reward_judge import RewardModelJudge
from resources.reward_model import UncertaintyModel


def tiny_resources(model_dir, labelling: LabellingSettings | None = None) -> dict:
    model = str(model_dir)
    return {
        "labelling": labelling or LabellingSettings(),
        "reward_judge": RewardModelJudge(),
        "label_source": label_source,
        "store": DuckDBStore(),
        "engine": GenerationEngine(device="cpu", batch_size=4),
        # Any transformers backbone works as the encoder: last-token pooling of the tiny Llama.
        "encoder": FeatureEncoder(
            encoder=f"{model}+text-stats", pooling="last", device="cpu", max_length=64
        ),
        # The whole vocabulary as "top-k" so the random model always puts mass on the digits.
        "judge": RubricJudge(model=model, device="cpu", top_k=1000),
        "uncertainty_model": UncertaintyModel(
            n_heads=4, hidden=[16, 16], lr=1e-2, max_steps=5, batch_size=4
        ),
    }


def tiny_run_config(model_dir, method: str = "drts") -> dict:
    members = [
        {"name": f"tiny-{t}", "model": str(model_dir), "temperature": t, "max_new_tokens": 6}
        for t in (0.0, 0.8, 1.2)
    ]
    return {
        "ops": {
            "round_prompts": {"config": {"batch_size": 4}},
            "completions": {"config": {"members": members}},
            "selected_pairs": {"config": {"method": method, "acquisition_width": 1.0}},
        }
    }


def materialize_round(
    instance, key, model_dir, method="drts", **resource_overrides
) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("rounds", [key])
    return dg.materialize(
        [*ROUND_ASSETS, *ROUND_CHECKS],
        instance=instance,
        partition_key=key,
        resources={**tiny_resources(model_dir), **resource_overrides},
        run_config=tiny_run_config(model_dir, method),
    )


def test_definitions_load_the_whole_graph():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "prompt_pool",
        "round_prompts",
        "completions",
        "response_features",
        "reward_scores",
        "selected_pairs",
        "judgements",
        "reward_model",
        "judge_screening",
        "annotation_batch",
        "preference_dataset",
        "dataset_report",
        "hub_dataset",
        "dpo_policy",
        "reward_model_checkpoint",
        "policy_eval",
        "policy_logprobs",
        "simulation_pool_features",
        "method_benchmark",
    }
    assert defs.resolve_job_def("active_round").partitions_def.name == "rounds"


def test_two_rounds_end_to_end_with_a_tiny_model(auf_home, tiny_lm_dir):
    instance = dg.DagsterInstance.ephemeral()
    store = DuckDBStore()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": store}).success

    first = materialize_round(instance, "round-0001", tiny_lm_dir)
    assert first.success
    assert all(c.passed for c in first.get_asset_check_evaluations()), [
        (c.check_name, c.metadata) for c in first.get_asset_check_evaluations() if not c.passed
    ]
    assert store.count_rows("round_prompts", "round-0001") == 4
    assert store.count_rows("completions", "round-0001") == 12  # 4 prompts x 3 members
    pairs = store.round_rows("pairs", "round-0001")
    assert pairs.height == 4 and (pairs["completion_a"] != pairs["completion_b"]).all()
    verdicts = store.round_rows("judgements", "round-0001")
    assert verdicts.height == 4
    assert set(verdicts["preference"]) <= {"a", "b", "tie", "failed"}
    assert store.count_rows("judge_scores", "round-0001") == 4 * len(
        set(pairs["completion_a"]) | set(pairs["completion_b"])
    )
    scores = store.round_rows("reward_scores", "round-0001")
    assert scores["reward_model_round"].null_count() == scores.height  # round 1: fresh heads

    second = materialize_round(instance, "round-0002", tiny_lm_dir, method="deltaucb")
    assert second.success
    used_1 = set(store.round_rows("round_prompts", "round-0001")["prompt_id"])
    used_2 = set(store.round_rows("round_prompts", "round-0002")["prompt_id"])
    assert used_1.isdisjoint(used_2)
    scores_2 = store.round_rows("reward_scores", "round-0002")
    assert set(scores_2["reward_model_round"]) == {"round-0001"}
    models = store.sql_for_tests(
        "SELECT round_id, pairs_trained FROM reward_models ORDER BY round_id"
    )
    assert models["round_id"].to_list() == ["round-0001", "round-0002"]
    labelled_1 = int(verdicts["preference"].is_in(["a", "b"]).sum())
    assert models["pairs_trained"][0] == labelled_1

    # Re-materialising a round replaces its rows: nothing is duplicated, nothing else changes.
    before = {t: store.count_rows(t) for t in ("completions", "pairs", "judgements")}
    assert materialize_round(instance, "round-0001", tiny_lm_dir).success
    assert {t: store.count_rows(t) for t in before} == before
    assert set(store.round_rows("round_prompts", "round-0001")["prompt_id"]) == used_1


def test_round_metadata_is_useful(auf_home, tiny_lm_dir):
    instance = dg.DagsterInstance.ephemeral()
    dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
    result = materialize_round(instance, "round-0001", tiny_lm_dir)
    meta = {
        e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["completions"]["completion_tokens"].value > 0
    assert meta["completions"]["tokens_per_second"].value > 0
    assert meta["selected_pairs"]["method"].value == "drts"
    assert Path(meta["reward_model"]["checkpoint"].value).name.startswith("round-0001.")
    assert not Path(meta["reward_model"]["checkpoint"].value).is_absolute()  # the home can move
    assert meta["response_features"]["encoded"].value == 12
    assert "preview" in meta["judgements"]
    json.dumps(meta["judgements"]["aspect_failure_rate"].value)
    # Each decided verdict carries the judge's confidence in its chosen side; ties and failures
    # carry none, and the metadata summarises the decided ones with a histogram.
    verdicts = DuckDBStore().round_rows("judgements", "round-0001")
    decided = verdicts.filter(pl.col("preference").is_in(["a", "b"]))
    assert decided.height > 0
    assert decided["confidence"].is_between(0.0, 1.0).all(), decided["confidence"]
    assert verdicts.filter(~pl.col("preference").is_in(["a", "b"]))["confidence"].null_count() == (
        verdicts.height - decided.height
    )
    assert meta["judgements"]["confidence"].value["n"] == decided.height
    assert meta["judgements"]["confidence_histogram"].value.startswith("![judge confidence]")
    # A person can judge the selected pairs from the preview: the prompt and both responses.
    preview = meta["selected_pairs"]["preview"].value
    header = preview.splitlines()[0]
    for column in ("prompt", "response_a", "response_b", "mu_a", "mu_b", "sigma_a", "sigma_b"):
        assert column in header, header
    store = DuckDBStore()
    pair = store.round_rows("pairs", "round-0001").row(0, named=True)
    texts = store.round_completion_texts("round-0001")
    first_prompt = texts.filter(pl.col("completion_id") == pair["completion_a"])["prompt"][0]
    assert first_prompt.replace("\n", " ").replace("|", "\\|")[:30] in preview


def test_an_unknown_method_is_refused_before_the_run_starts(auf_home, tiny_lm_dir):
    # The run's first step checks the whole run config (auf_assets.preflight) before any work:
    # the unknown method is named with the valid ones.
    instance = dg.DagsterInstance.ephemeral()
    dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
    with pytest.raises(dg.Failure, match="selected_pairs.*nope") as info:
        materialize_round(instance, "round-0001", tiny_lm_dir, method="nope")
    assert "deltaucb" in str(info.value)
    assert DuckDBStore().count_rows("round_prompts") == 0


def test_changing_the_encoder_between_rounds_fails_and_names_it(auf_home, tiny_lm_dir):
    instance = dg.DagsterInstance.ephemeral()
    store = DuckDBStore()
    dg.materialize([prompt_pool], instance=instance, resources={"store": store})
    assert materialize_round(instance, "round-0001", tiny_lm_dir).success
    other = FeatureEncoder(
        encoder=str(tiny_lm_dir), pooling="mean", device="cpu", max_length=64, dtype="fp32"
    )
    # Round 1's model reads other features: starting round 2 from fresh heads would fork the
    # model's history, so round 2 stops and says why.
    with pytest.raises(dg.Failure, match="trained on .* features but the encoder is now"):
        materialize_round(instance, "round-0002", tiny_lm_dir, encoder=other)
    assert store.count_rows("reward_scores", "round-0002") == 0
