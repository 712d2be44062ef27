"""DPO/IPO/SimPO policies and reward models trained with TRL + PEFT on a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from auf_assets.core.settings import SettingsError
from auf_assets.core.training import (
    TrainingError,
    TrainingSettings,
    check_rows,
    train_policy,
    train_reward_model,
)
from auf_assets.core.training_evaluation import (
    implicit_reward_accuracy,
    load_policy,
    load_reward_model,
    response_logps,
    reward_model_accuracy,
    win_rate,
)

TOPICS = [
    "the sea",
    "a cat",
    "python code",
    "paris",
    "photosynthesis",
    "the wind",
    "a poem",
    "five",
]


def toy_rows(n: int = 16) -> list[dict]:
    """Separable pairs: the chosen answer always says one thing, the rejected another."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}."}],
            "chosen": [{"role": "assistant", "content": "Rate 5. The answer is good."}],
            "rejected": [{"role": "assistant", "content": "def add(a, b): return a"}],
        }
        for i in range(n)
    ]


def settings(**kw) -> TrainingSettings:
    base = dict(
        learning_rate=2e-2,
        epochs=1,
        max_steps=12,
        batch_size=4,
        lora_r=4,
        lora_alpha=8,
        max_length=64,
        device="cpu",
        dpo_beta=0.1,
    )
    return TrainingSettings(**{**base, **kw})


def test_dpo_loss_goes_down_and_the_adapter_reloads(tiny_chat_lm_dir, tmp_path):
    rows = toy_rows()
    out = tmp_path / "policy"
    report = train_policy(tiny_chat_lm_dir, rows, settings(), out, log=lambda _: None)
    losses = report.curves["loss"]
    assert report.steps == 12 and len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05
    assert (out / "adapter_model.safetensors").is_file()
    info = json.loads((out / "auf_checkpoint.json").read_text())
    assert info["settings"]["loss"] == "dpo" and info["rows"] == 16

    tokenizer, model = load_policy(tiny_chat_lm_dir, out, device="cpu")
    prompts = [r["prompt"] for r in rows[:4]]
    chosen = [r["chosen"] for r in rows[:4]]
    first = response_logps(model, tokenizer, prompts, chosen)
    again = response_logps(
        *reversed(load_policy(tiny_chat_lm_dir, out, device="cpu")), prompts, chosen
    )
    np.testing.assert_allclose(first, again, rtol=1e-5)
    with model.disable_adapter():
        base = response_logps(model, tokenizer, prompts, chosen)
    assert np.all(first > base)  # the trained adapter raised the chosen answer's likelihood
    assert implicit_reward_accuracy(model, tokenizer, rows, beta=0.1)["accuracy"] == 1.0


@pytest.mark.parametrize("loss", ["ipo", "simpo"])
def test_ipo_and_simpo_train(tiny_chat_lm_dir, tmp_path, loss):
    report = train_policy(
        tiny_chat_lm_dir,
        toy_rows(8),
        settings(loss=loss, max_steps=3),
        tmp_path / loss,
        log=lambda _: None,
    )
    assert report.steps == 3 and all(np.isfinite(report.curves["loss"]))
    assert (tmp_path / loss / "adapter_model.safetensors").is_file()


def test_warm_start_continues_from_the_previous_adapter(tiny_chat_lm_dir, tmp_path):
    rows = toy_rows()
    train_policy(tiny_chat_lm_dir, rows, settings(), tmp_path / "r1", log=lambda _: None)
    cold = train_policy(
        tiny_chat_lm_dir, rows, settings(max_steps=2), tmp_path / "cold", log=lambda _: None
    )
    warm = train_policy(
        tiny_chat_lm_dir,
        rows,
        settings(max_steps=2),
        tmp_path / "warm",
        init_adapter=tmp_path / "r1",
        log=lambda _: None,
    )
    assert warm.curves["loss"][0] < cold.curves["loss"][0]


def test_reward_model_accuracy_rises(tiny_chat_lm_dir, tmp_path):
    rows = toy_rows()
    short = settings(max_steps=1, learning_rate=1e-9)
    train_reward_model(tiny_chat_lm_dir, rows, short, tmp_path / "untrained", log=lambda _: None)
    before = reward_model_accuracy(
        *reversed(load_reward_model(tiny_chat_lm_dir, tmp_path / "untrained", device="cpu")), rows
    )
    train_reward_model(
        tiny_chat_lm_dir, rows, settings(max_steps=16), tmp_path / "rm", log=lambda _: None
    )
    after = reward_model_accuracy(
        *reversed(load_reward_model(tiny_chat_lm_dir, tmp_path / "rm", device="cpu")), rows
    )
    assert after["accuracy"] == 1.0 and after["mean_margin"] > before["mean_margin"]


def test_bad_input_fails_clearly_and_keeps_the_previous_checkpoint(
    tiny_chat_lm_dir, tiny_lm_dir, tmp_path
):
    out = tmp_path / "policy"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"previous")
    with pytest.raises(TrainingError, match="dataset is empty"):
        train_policy(tiny_chat_lm_dir, [], settings(), out, log=lambda _: None)
    same = [{**r, "rejected": r["chosen"]} for r in toy_rows(4)]
    with pytest.raises(TrainingError, match="one-class"):
        check_rows(same)
    with pytest.raises(TrainingError, match="no chat template"):
        train_policy(tiny_lm_dir, toy_rows(4), settings(), out, log=lambda _: None)
    with pytest.raises(TrainingError, match="longer than max_length=8"):
        train_policy(tiny_chat_lm_dir, toy_rows(4), settings(max_length=8), out, log=print)
    with pytest.raises(SettingsError, match="unknown loss 'kto'; valid: dpo, ipo, simpo"):
        settings(loss="kto")
    assert (out / "adapter_model.safetensors").read_bytes() == b"previous"


def test_a_base_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(TrainingError, match="not a causal language model"):
        train_policy(tmp_path, toy_rows(4), settings(), tmp_path / "out", log=lambda _: None)


def test_win_rate_counts_ties_half_and_gives_an_interval():
    result = win_rate([3, 2, 5, float("nan")], [1, 2, 4, 1])
    assert result["wins"] == 2 and result["ties"] == 1 and result["failed"] == 1
    assert result["win_rate"] == pytest.approx(2.5 / 3)
    assert 0 < result["ci_low"] < result["win_rate"] < result["ci_high"] <= 1


# -- the Dagster assets -----------------------------------------------------------------------


def _training_resources(tiny_lm_dir, tiny_chat_lm_dir, **overrides):
    from test_round import tiny_resources

    from resources.training import TrainingResource

    return {
        **tiny_resources(tiny_lm_dir),
        "training": TrainingResource(
            base_model=str(tiny_chat_lm_dir),
            device="cpu",
            max_steps=4,
            batch_size=2,
            max_length=512,
            lora_r=4,
            lora_alpha=8,
            learning_rate=1e-2,
            test_fraction=0.5,
            **overrides,
        ),
    }


def test_training_assets_train_register_and_evaluate_a_round(home, tiny_lm_dir, tiny_chat_lm_dir):
    import dagster as dg

    from auf_assets.training import dpo_policy, policy_eval, reward_model_checkpoint
    from resources.store import DuckDBStore

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["round-0001", "round-0002"])
    resources = _training_resources(tiny_lm_dir, tiny_chat_lm_dir)
    first = dg.materialize(
        [dpo_policy], instance=instance, partition_key="round-0001", resources=resources
    )
    assert first.success
    result = dg.materialize(
        [dpo_policy, reward_model_checkpoint, policy_eval],
        instance=instance,
        partition_key="round-0002",
        resources=resources,
        run_config={
            "ops": {
                "dpo_policy": {"config": {"loss": "ipo", "warm_start": True}},
                "policy_eval": {"config": {"win_rate_prompts": 3, "max_new_tokens": 4}},
            }
        },
    )
    assert result.success
    store = DuckDBStore()
    policy = store.checkpoint("dpo_policy", "round-0002")
    assert policy["rounds"] == "round-0001,round-0002" and policy["loss"] == "ipo"
    assert (store.root / policy["path"] / "adapter_model.safetensors").is_file()
    meta = result.asset_materializations_for_node("dpo_policy")[0].metadata
    assert meta["warm_start_from"].value == "checkpoints/dpo_policy/round-0001"  # home-relative
    assert meta["checkpoint"].value == policy["path"] == "checkpoints/dpo_policy/round-0002"
    assert meta["steps"].value == 4 and meta["train_pairs"].value == policy["rows"]
    assert meta["curves"].value.startswith("![training curves](data:image/png")
    rm = result.asset_materializations_for_node("reward_model_checkpoint")[0].metadata
    assert 0.0 <= rm["heldout_accuracy"].value <= 1.0
    assert store.checkpoint("reward_model", "round-0002")["loss"] == "bradley-terry"
    record = json.loads((store.root / rm["checkpoint"].value / "auf_checkpoint.json").read_text())
    assert record["heldout"] == {
        "accuracy": rm["heldout_accuracy"].value,
        "pairs": rm["heldout_pairs"].value,
    }
    assert record["rounds"] == ["round-0001", "round-0002"] and record["loss"] == "bradley-terry"
    ev = result.asset_materializations_for_node("policy_eval")[0].metadata
    assert 0.0 <= ev["implicit_accuracy_vs_labels"].value <= 1.0
    assert ev["comparisons"].value + ev["judge_failures"].value == 3
    assert ev["across_rounds"].value.startswith("![evaluation across rounds]")
    evals = store.evals()
    assert {"vs_labels", "win_rate_vs_base", "heldout_accuracy"} <= set(evals["metric"])


def test_training_a_round_without_judgements_fails_clearly(home, tiny_lm_dir, tiny_chat_lm_dir):
    import dagster as dg

    from auf_assets.training import dpo_policy

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["round-0007"])
    with pytest.raises(dg.Failure, match="round-0007 has no judgements"):
        dg.materialize(
            [dpo_policy],
            instance=instance,
            partition_key="round-0007",
            resources=_training_resources(tiny_lm_dir, tiny_chat_lm_dir),
        )


def test_auf_train_trains_the_newest_round(home, tiny_chat_lm_dir, monkeypatch, capsys):
    import dagster as dg

    from auf_assets.cli import main
    from resources.store import DuckDBStore

    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    args = [
        "train",
        "--no-eval",
        "--base-model",
        str(tiny_chat_lm_dir),
        "--device",
        "cpu",
        "--max-steps",
        "2",
        "--max-length",
        "512",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dpo_policy round-0002" in out and "2 steps" in out
    assert "note: only" in out  # a few pairs: the curves mean nothing, and the console says so
    assert f"checkpoint: {home / 'checkpoints' / 'dpo_policy' / 'round-0002'}" in out
    assert DuckDBStore().checkpoint("dpo_policy", "round-0002") is not None
    assert main([*args, "--reward-model", "--round", "1"]) == 0  # the round's number is enough
    out = capsys.readouterr().out
    assert "reward_model_checkpoint for round-0001" in out and "held-out accuracy" in out
    assert "nan" not in out
    partitions = dg.DagsterInstance.get().get_dynamic_partitions("rounds")
    assert "1" not in partitions and "round-0001" in partitions
    # Refused before any work, and no partition is added for a round that does not exist.
    assert main(["train", "--round", "9", "--base-model", str(tiny_chat_lm_dir)]) == 2
    assert "round-0009 has no judgements" in capsys.readouterr().err
    assert "round-0009" not in dg.DagsterInstance.get().get_dynamic_partitions("rounds")


def test_the_engine_generates_with_a_policy_adapter_merged(tiny_chat_lm_dir, tmp_path):
    """policy_eval hands the adapter folder to the generation engine: it loads merged."""
    from resources.model_loading import load_tokenizer_and_model

    train_policy(
        tiny_chat_lm_dir, toy_rows(8), settings(max_steps=2), tmp_path / "p", log=lambda _: None
    )
    tokenizer, model = load_tokenizer_and_model(str(tmp_path / "p"), "causal", "cpu", None)
    assert not any("lora" in name for name, _ in model.named_parameters())
    merged = response_logps(
        model, tokenizer, [r["prompt"] for r in toy_rows(2)], [r["chosen"] for r in toy_rows(2)]
    )
    peft_tok, peft_model = load_policy(tiny_chat_lm_dir, tmp_path / "p", device="cpu")
    unmerged = response_logps(
        peft_model, peft_tok, [r["prompt"] for r in toy_rows(2)], [r["chosen"] for r in toy_rows(2)]
    )
    np.testing.assert_allclose(merged, unmerged, rtol=1e-4)
