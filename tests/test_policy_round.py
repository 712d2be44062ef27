"""The policy loop through Dagster: policy_logprobs -> policy-aware selected_pairs -> dpo_policy."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
from test_round import tiny_resources, tiny_run_config

from auf_assets.checks import ROUND_CHECKS
from auf_assets.policy_loop import policy_logprobs
from auf_assets.prompts import prompt_pool
from auf_assets.round import ROUND_ASSETS
from auf_assets.training import dpo_policy
from resources.store import DuckDBStore
from resources.training import TrainingResource


def _resources(tiny_lm_dir, tiny_chat_lm_dir) -> dict:
    return {
        **tiny_resources(tiny_lm_dir),
        "training": TrainingResource(
            base_model=str(tiny_chat_lm_dir),
            device="cpu",
            batch_size=2,
            max_length=256,
            lora_r=4,
            lora_alpha=8,
            learning_rate=5e-2,
            test_fraction=0.0,
        ),
    }


def _policy_round(instance, key, tiny_lm_dir, tiny_chat_lm_dir, method, assets=None):
    instance.add_dynamic_partitions("rounds", [key])
    assets = assets or [*ROUND_ASSETS, *ROUND_CHECKS, policy_logprobs, dpo_policy]
    config = tiny_run_config(tiny_lm_dir, method)
    if dpo_policy in assets:
        config["ops"]["dpo_policy"] = {"config": {"warm_start": True, "max_steps": 3}}
    config["ops"]["policy_logprobs"] = {
        "config": {"gradient_features": method == "activedpo", "sketch_dim": 8, "max_length": 96}
    }
    return dg.materialize(
        assets,
        instance=instance,
        partition_key=key,
        resources=_resources(tiny_lm_dir, tiny_chat_lm_dir),
        run_config=config,
    )


def _meta(result, name: str) -> dict:
    return next(
        e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == name
    )


@pytest.mark.parametrize("method", ["sharp", "activedpo"])
def test_the_policy_picks_its_own_pairs_round_after_round(
    auf_home, tiny_lm_dir, tiny_chat_lm_dir, method
):
    instance = dg.DagsterInstance.ephemeral()
    store = DuckDBStore()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": store}).success

    first = _policy_round(instance, "round-0001", tiny_lm_dir, tiny_chat_lm_dir, method)
    assert first.success
    assert all(c.passed for c in first.get_asset_check_evaluations())
    logps = store.round_rows("policy_logprobs", "round-0001")
    assert logps.height == store.count_rows("completions", "round-0001") == 12
    # Round 1: no adapter yet, the policy is the reference, and the pairs are random.
    assert (logps["logp_policy"] == logps["logp_reference"]).all()
    assert logps["policy_round"].is_null().all()
    # The fallback is its own field of the pairs, and the check reads it.
    assert _meta(first, "selected_pairs")["fallback"].value == "random"
    assert _meta(first, "selected_pairs")["method"].value == method
    first_pairs = store.round_rows("pairs", "round-0001")
    assert set(first_pairs["method"]) == {method} and set(first_pairs["fallback"]) == {"random"}
    check = next(
        c for c in first.get_asset_check_evaluations() if c.check_name == "selected_pairs_valid"
    )
    assert check.passed and check.metadata["fallback"].value == "random"
    assert store.checkpoint("dpo_policy", "round-0001") is not None

    second = _policy_round(instance, "round-0002", tiny_lm_dir, tiny_chat_lm_dir, method)
    assert second.success
    assert all(c.passed for c in second.get_asset_check_evaluations())
    logps = store.round_rows("policy_logprobs", "round-0002")
    assert set(logps["policy_round"]) == {"round-0001"}
    assert not np.allclose(logps["logp_policy"], logps["logp_reference"])  # the DPO step moved pi
    meta = _meta(second, "policy_logprobs")
    assert meta["reference_computed"].value == 12 and meta["response_tokens"].value > 0
    pairs = store.round_rows("pairs", "round-0002")
    assert set(pairs["method"]) == {method} and pairs["fallback"].is_null().all()
    assert (pairs["completion_a"] != pairs["completion_b"]).all()
    texts = dict(
        store.round_rows("completions", "round-0002")
        .select("completion_id", "response")
        .iter_rows()
    )
    assert all(
        texts[a] != texts[b]
        for a, b in zip(pairs["completion_a"], pairs["completion_b"], strict=True)
    )
    if method == "sharp":  # the smallest implicit margin of each prompt's pairs
        reward = dict(
            zip(
                logps["completion_id"],
                logps["beta"] * (logps["logp_policy"] - logps["logp_reference"]),
                strict=True,
            )
        )
        by_prompt = logps.group_by("prompt_id").agg("completion_id")
        smallest = {}
        for pid, ids in by_prompt.iter_rows():
            gaps = [
                abs(reward[a] - reward[b])
                for i, a in enumerate(ids)
                for b in ids[i + 1 :]
                if texts[a] != texts[b]
            ]
            smallest[pid] = min(gaps)
        for pid, a, b in pairs.select("prompt_id", "completion_a", "completion_b").iter_rows():
            assert abs(reward[a] - reward[b]) == pytest.approx(smallest[pid])
    else:
        assert logps["gradient_file"].drop_nulls().len() == 12
        state = store.round_rows("policy_selection_state", "round-0002")
        v_inv = np.load(store.resolve(state["v_inv_path"][0]))
        assert v_inv.shape == (8, 8)
    # The reference is cached: scoring round 2 again computes none of it.
    again = dg.materialize(
        [policy_logprobs],
        instance=instance,
        partition_key="round-0002",
        resources=_resources(tiny_lm_dir, tiny_chat_lm_dir),
        run_config={"ops": {"policy_logprobs": {"config": {"max_length": 96}}}},
    )
    assert _meta(again, "policy_logprobs")["reference_computed"].value == 0


def test_a_round_without_the_previous_policy_fails_and_names_it(
    auf_home, tiny_lm_dir, tiny_chat_lm_dir
):
    instance = dg.DagsterInstance.ephemeral()
    store = DuckDBStore()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": store}).success
    # Round 1 selected with the reward model: the policy loop may start in round 2, from the base.
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    assert dg.materialize(
        [*ROUND_ASSETS, *ROUND_CHECKS],
        instance=instance,
        partition_key="round-0001",
        resources=_resources(tiny_lm_dir, tiny_chat_lm_dir),
        run_config=tiny_run_config(tiny_lm_dir, "drts"),
    ).success
    assert _policy_round(instance, "round-0002", tiny_lm_dir, tiny_chat_lm_dir, "sharp").success
    assert store.round_rows("policy_logprobs", "round-0002")["policy_round"].is_null().all()
    # Round 3 without its DPO step, then round 4 would select with a stale policy: refused.
    without = [*ROUND_ASSETS, *ROUND_CHECKS, policy_logprobs]
    assert _policy_round(
        instance, "round-0003", tiny_lm_dir, tiny_chat_lm_dir, "sharp", without
    ).success
    with pytest.raises(dg.Failure, match="round-0003's dpo_policy"):
        _policy_round(instance, "round-0004", tiny_lm_dir, tiny_chat_lm_dir, "sharp", without)
    # selected_pairs with a policy-aware method needs policy_logprobs (round 4 has none).
    with pytest.raises(dg.Failure, match="materialise round-0004's policy_logprobs"):
        dg.materialize(
            [*ROUND_ASSETS],
            instance=instance,
            partition_key="round-0004",
            resources=_resources(tiny_lm_dir, tiny_chat_lm_dir),
            run_config=tiny_run_config(tiny_lm_dir, "wsharp"),
        )


def test_the_policy_round_job_is_defined():
    from auf_assets.definitions import defs

    job = defs.resolve_job_def("policy_round")
    assert {"policy_logprobs", "selected_pairs", "dpo_policy", "reward_model"} <= set(
        job.graph.node_dict
    )


def test_auf_demo_runs_policy_methods_as_policy_rounds():
    from auf_assets.cli.demo import _policy_round_config
    from auf_assets.jobs import POLICY_ROUND_CONFIG

    config = _policy_round_config("activedpo")
    assert config["ops"]["selected_pairs"]["config"]["method"] == "activedpo"
    assert config["ops"]["policy_logprobs"]["config"]["gradient_features"] is True
    assert config["ops"]["dpo_policy"]["config"]["warm_start"] is True
    assert _policy_round_config("sharp")["ops"]["policy_logprobs"]["config"] == {
        "gradient_features": False
    }
    assert POLICY_ROUND_CONFIG["ops"]["selected_pairs"]["config"]["method"] == "sharp"  # a copy


def test_an_interrupted_policy_round_is_run_again_until_its_dpo_step(auf_home):
    import polars as pl

    from auf_assets.cli.demo import _round_to_run

    store = DuckDBStore()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="reward_model", partition="round-0001")
    )

    def picked_by(method: str, fallback: str | None = None) -> None:
        row = {"pair_id": "p1", "round_id": "round-0001", "prompt_id": "q", "completion_a": "a"}
        row.update(completion_b="b", method=method, fallback=fallback)
        store.replace_round("pairs", "round-0001", pl.DataFrame([row]))

    # A finished reward-model round is not re-run when the policy loop starts after it.
    picked_by("deltaucb")
    assert _round_to_run(instance, ["round-0001"], "policy_round") is None
    # A policy round without its DPO step is.
    picked_by("sharp", fallback="random")
    assert _round_to_run(instance, ["round-0001"], "active_round") is None
    assert _round_to_run(instance, ["round-0001"], "policy_round") == "round-0001"
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="dpo_policy", partition="round-0001")
    )
    assert _round_to_run(instance, ["round-0001"], "policy_round") is None
