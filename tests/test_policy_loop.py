"""The DPO policy in the loop: log-probs, gradient features, and simulated policy-aware rounds."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_simulation import linear_features, pool_frame

from auf_assets.core.methods import method_names
from auf_assets.core.policy import (
    PolicyLoop,
    PolicyLoopConfig,
    PolicyScorer,
    ReferenceCache,
    conversation,
)
from auf_assets.core.policy_selection import CountSketch
from auf_assets.core.simulation import SimulationConfig, simulate, validate_pool

TINY_LOOP = PolicyLoopConfig(steps_per_round=2, batch_size=2, max_length=64, sketch_dim=16)


def _pairs(n: int = 3):
    prompts = [f"Question {i}?" for i in range(n)]
    return [conversation(p, f"Answer {i} " * (i + 1)) for i, p in enumerate(prompts)]


def test_a_fresh_adapter_is_the_reference_and_logps_match_one_by_one(tiny_chat_lm_dir):
    scorer = PolicyScorer(tiny_chat_lm_dir, max_length=64, batch_size=2)
    turns = _pairs(4)
    prompts, responses = [t[0] for t in turns], [t[1] for t in turns]
    pol, tokens = scorer.logps(prompts, responses)
    ref, ref_tokens = scorer.logps(prompts, responses, reference=True)
    np.testing.assert_allclose(pol, ref, atol=1e-5)  # LoRA B starts at zero
    assert (tokens > 0).all() and np.array_equal(tokens, ref_tokens)
    assert (pol < 0).all()
    # Batched (padded, reordered by length) equals one at a time.
    pairs = zip(prompts, responses, strict=True)
    single = np.array([scorer.logps([p], [r])[0][0] for p, r in pairs])
    np.testing.assert_allclose(pol, single, rtol=1e-4, atol=1e-4)
    # Longer answers have more tokens.
    assert tokens[-1] > tokens[0]


def test_gradient_features_are_sketched_lora_gradients(tiny_chat_lm_dir):
    scorer = PolicyScorer(tiny_chat_lm_dir, max_length=64)
    n = scorer.n_lora_parameters()
    assert n > 0
    sketch = CountSketch(n, 16, seed=3)
    turns = _pairs(3)
    g = scorer.gradient_features([t[0] for t in turns], [t[1] for t in turns], sketch, beta=0.5)
    assert g.shape == (3, 16) and np.isfinite(g).all()
    assert np.abs(g).sum() > 0  # LoRA B's gradient is not zero even for a fresh adapter
    g2 = scorer.gradient_features([t[0] for t in turns], [t[1] for t in turns], sketch, beta=1.0)
    np.testing.assert_allclose(g2, 2 * g, rtol=1e-4, atol=1e-6)  # linear in beta
    with pytest.raises(ValueError, match="sketch projects"):
        scorer.gradient_features([turns[0][0]], [turns[0][1]], CountSketch(n + 1, 16, 3), 1.0)


def test_the_reference_cache_computes_each_response_once(tiny_chat_lm_dir, tmp_path):
    scorer = PolicyScorer(tiny_chat_lm_dir, max_length=64)
    cache = ReferenceCache("tiny", tmp_path / "ref.json")
    turns = _pairs(3)
    prompts, responses = [t[0] for t in turns], [t[1] for t in turns]
    first, _, computed = cache.logps(scorer, prompts, responses)
    assert computed == 3
    again, _, computed = ReferenceCache("tiny", tmp_path / "ref.json").logps(
        scorer, prompts[:2], responses[:2]
    )
    assert computed == 0 and np.allclose(again, first[:2])
    # Another base model never reads these values.
    assert ReferenceCache("other", tmp_path / "ref.json").values == {}


def _pool(n_prompts: int = 12, n_resp: int = 4):
    return validate_pool(pool_frame(n_prompts, n_resp))


@pytest.mark.parametrize("method", sorted(method_names("policy")))
def test_policy_aware_methods_run_a_simulation(tiny_chat_lm_dir, method):
    pool = _pool()
    x = linear_features(pool)
    loop = PolicyLoop(tiny_chat_lm_dir, TINY_LOOP, seed=0)
    try:
        config = SimulationConfig(method=method, batch_size=3, max_rounds=3, seed=0)
        result = simulate(pool, x, config, policy=loop)
    finally:
        loop.close()
    pairs = result.pairs
    assert pairs.height == 9 and (pairs["labels"] == 2).all()
    assert (pairs["chosen_completion_id"] != pairs["rejected_completion_id"]).all()
    assert result.info["policy"]["fallback_rounds"] >= 1  # round 1: pi == pi_ref, random
    assert loop.rounds_trained == 3
    last = result.curve[-1]
    assert 0.0 <= last["policy_accuracy"] <= 1.0
    seconds = last["policy_seconds"]
    assert seconds["training"] > 0 and seconds["logprobs"] > 0
    if method == "activedpo":
        assert seconds["gradients"] > 0 and loop.v_inv is not None
        assert loop.v_inv.shape == (16, 16)


def test_round_one_of_a_policy_method_is_random_and_a_method_needs_the_policy(tiny_chat_lm_dir):
    pool = _pool()
    x = linear_features(pool)
    with pytest.raises(ValueError, match="pass a policy loop"):
        simulate(pool, x, SimulationConfig(method="sharp", batch_size=3, max_rounds=1))
    picks = []
    for method in ("sharp", "random"):
        loop = PolicyLoop(tiny_chat_lm_dir, TINY_LOOP, seed=0)
        try:
            config = SimulationConfig(method=method, batch_size=3, max_rounds=1, seed=5)
            result = simulate(pool, x, config, policy=loop)
        finally:
            loop.close()
        picks.append(result.pairs)
        # any method with a policy loop trains it and reports its accuracy
        assert result.curve[-1]["policy_accuracy"] is not None
    assert picks[0]["prompt_id"].to_list() == picks[1]["prompt_id"].to_list()


def test_auf_simulate_runs_a_policy_method(tiny_chat_lm_dir, tmp_path, auf_home, capsys):
    from auf_assets.cli import main

    pool_path = tmp_path / "pool.parquet"
    pool_frame(12, 4).write_parquet(pool_path)
    out = tmp_path / "sharp.parquet"
    argv = [
        "simulate", "--pool", str(pool_path), "--out", str(out), "--method", "sharp",
        "--batch", "4", "--max-rounds", "2", "--policy-model", str(tiny_chat_lm_dir),
        "--policy-steps", "2", "--policy-max-length", "64",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["info"]["policy"]["config"]["steps_per_round"] == 2
    assert "DPO policy: held-out implicit-reward accuracy" in capsys.readouterr().out
    # the reference log-probs are cached in the home, per base model
    assert (auf_home / "policy" / "reference_logps.json").is_file()


def test_auf_methods_lists_the_policy_aware_methods(capsys):
    from auf_assets.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in method_names("policy"):
        assert name in out


@pytest.mark.process
def test_the_sketch_is_the_same_in_another_process():
    code = (
        "from auf_assets.core.policy_selection import CountSketch;"
        "print(CountSketch(5000, 64, 7).fingerprint)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == CountSketch(5000, 64, 7).fingerprint


def test_identical_pairs_marks_same_texts_of_one_prompt_only():
    from auf_assets.core.policy_selection import identical_pairs

    out = identical_pairs([["a", "b", "a"], ["x", "x"]], 3)
    assert out.shape == (2, 3, 3)
    assert out[0, 0, 2] and out[0, 2, 0] and not out[0, 0, 1]
    assert out[1, 0, 1] and not out[1, 0, 2]  # the padding column is never identical
    assert not out[:, range(3), range(3)].any()


def test_the_bench_table_shows_the_policy_and_its_cost_per_round():
    from auf_assets.sim_bench_report import policy_table

    def run(method, acc, training):
        point = {
            "mean_gap": 0.2,
            "accuracy": 0.8,
            "policy_accuracy": acc,
            "policy_seconds": {"logprobs": 4.0, "training": training, "selection": 0.2},
        }
        return {"method": method, "curve": [point], "info": {"rounds": 2}}

    runs = [run("sharp", 0.6, 10.0), run("sharp", 0.8, 30.0), run("random", 0.5, 8.0)]
    lines = policy_table(runs, ["random", "sharp", "apl"]).splitlines()
    assert len(lines) == 4  # header, rule, two methods (apl has no runs)
    assert lines[3].startswith("| sharp | 2 |") and "0.700 ± 0.100" in lines[3]
    # seconds per round: logprobs 4/2, gradients 0, selection 0.2/2, training (10+30)/2/2
    assert lines[3].endswith("| 2.0 | 0.0 | 0.1 | 10.0 |")


def test_a_prompt_that_fills_max_length_leaves_nothing_to_score(tiny_chat_lm_dir):
    scorer = PolicyScorer(tiny_chat_lm_dir, max_length=64)
    long_prompt, response = conversation("word " * 80, "a short answer")
    logp, tokens = scorer.logps([long_prompt], [response])
    assert tokens[0] == 0 and logp[0] == 0.0  # masked by the selection, dropped by TRL
    short_prompt, _ = conversation("hi", "x")
    assert scorer.logps([short_prompt], [response])[1][0] > 0
