"""Checkpoint folders that load after their home moves, with a real model card and record.

The loading code of docs/training.md and of each model card runs here, on checkpoints trained
from tiny random models.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_training import settings, toy_rows

from auf_assets.core.checkpoints import (
    SMALL_HELDOUT_PAIRS,
    SMALL_TRAIN_PAIRS,
    adapter_base,
    base_fields,
    heldout_note,
    train_note,
)
from auf_assets.core.training import train_policy, train_reward_model
from auf_assets.core.training_evaluation import (
    load_policy,
    load_reward_model,
    response_logps,
    reward_scores,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"
CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def _run(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, "<snippet>", "exec"), namespace)  # noqa: S102 - the documented code
    return namespace


def _train_both(home: Path, base_dir: Path) -> dict[str, Path]:
    """A policy and a reward model for round-0003, written as the assets write them."""
    folders = {}
    for kind, train, sub in (
        ("policy", train_policy, "dpo_policy"),
        ("reward_model", train_reward_model, "reward_model"),
    ):
        out = home / "checkpoints" / sub / "round-0003"
        info = {
            "round": "round-0003",
            "rounds": ["round-0001", "round-0002", "round-0003"],
            "checkpoint": f"checkpoints/{sub}/round-0003",
            **base_fields(base_dir, str(base_dir), home, out),
        }
        train(base_dir, toy_rows(8), settings(max_steps=2), out, info=info, log=lambda _: None)
        folders[kind] = out
    return folders


@pytest.fixture()
def trained_home(tmp_path, tiny_chat_lm_dir) -> Path:
    """A home `.auf` whose base model lives inside it (as the packaged model does)."""
    home = tmp_path / "repo" / ".auf"
    base = home / "models" / "tiny-chat"
    shutil.copytree(tiny_chat_lm_dir, base)
    _train_both(home, base)
    return home


def test_a_base_inside_the_home_is_named_relative_to_it(trained_home):
    for folder in (trained_home / "checkpoints").glob("*/round-0003"):
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "models/tiny-chat"
        record = json.loads((folder / "auf_checkpoint.json").read_text())
        assert record["base_model"] == "models/tiny-chat" and record["base_model_in_home"]
        for path in folder.iterdir():  # no file pins the home's absolute location
            if path.suffix in (".json", ".md", ".jinja", ".txt"):
                assert str(trained_home.parent) not in path.read_text(), path.name


def test_checkpoints_load_after_the_home_moves(trained_home, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from resources.model_loading import load_tokenizer_and_model

    moved = tmp_path / "elsewhere" / ".auf"
    shutil.move(trained_home, moved)
    adapter = moved / "checkpoints" / "dpo_policy" / "round-0003"
    assert adapter_base(adapter) == str(moved / "models" / "tiny-chat")

    prompts, chosen = [r["prompt"] for r in toy_rows(2)], [r["chosen"] for r in toy_rows(2)]
    tokenizer, model = load_policy(moved / "models" / "tiny-chat", adapter, device="cpu")
    expected = response_logps(model, tokenizer, prompts, chosen)
    # peft alone, from the home folder: the base's path is relative to it
    monkeypatch.chdir(moved)
    auto = AutoPeftModelForCausalLM.from_pretrained("checkpoints/dpo_policy/round-0003")
    np.testing.assert_allclose(
        response_logps(auto, tokenizer, prompts, chosen), expected, rtol=1e-5
    )
    # transformers' own adapter loading (peft installed), from the home folder too
    auto = AutoModelForCausalLM.from_pretrained("checkpoints/dpo_policy/round-0003")
    np.testing.assert_allclose(
        response_logps(auto, tokenizer, prompts, chosen), expected, rtol=1e-5
    )
    # the generation engine, from anywhere (policy_eval generates with the adapter folder)
    monkeypatch.chdir(tmp_path)
    _, merged = load_tokenizer_and_model(str(adapter), "causal", "cpu", None)
    np.testing.assert_allclose(
        response_logps(merged, tokenizer, prompts, chosen), expected, rtol=1e-4
    )


def test_a_base_outside_the_home_keeps_its_absolute_path_or_repo_id(tmp_path, tiny_chat_lm_dir):
    home, out = tmp_path / "home", tmp_path / "home" / "checkpoints" / "x"
    outside = base_fields(tiny_chat_lm_dir, str(tiny_chat_lm_dir), home, out)
    assert outside["base_model"] == str(tiny_chat_lm_dir.resolve())
    assert not outside["base_model_in_home"]
    cached = base_fields(tmp_path / "hub-cache" / "snap", "HuggingFaceTB/SmolLM2-135M", home, out)
    assert cached["base_model"] == "HuggingFaceTB/SmolLM2-135M"


def test_the_model_card_describes_the_checkpoint_and_its_code_runs(trained_home, monkeypatch):
    policy = trained_home / "checkpoints" / "dpo_policy" / "round-0003"
    reward = trained_home / "checkpoints" / "reward_model" / "round-0003"
    card = (policy / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n")
    assert "More Information Needed" not in card  # not peft's blank template
    for text in ("round-0001, round-0002, round-0003", "8 pairs", "`models/tiny-chat`"):
        assert text in card
    assert "DPOTrainer" in card and "loss_last" in card and "How to load" in card
    assert f"fewer than {SMALL_TRAIN_PAIRS}" in card  # the small-data note
    rm_card = (reward / "README.md").read_text()
    assert "RewardTrainer" in rm_card and "Bradley-Terry" in rm_card and "num_labels=1" in rm_card

    monkeypatch.chdir(trained_home)  # the cards' code runs from the home folder
    (policy_code,) = _python_blocks(card)
    assert _run(policy_code)["policy"] is not None
    (reward_code,) = _python_blocks(rm_card)
    tokenizer, model = load_reward_model(trained_home / "models" / "tiny-chat", reward, "cpu")
    expected = reward_scores(model, tokenizer, [CONVERSATION])[0]
    assert _run(reward_code)["reward"] == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


def test_the_reward_model_records_its_own_loss(trained_home):
    record = json.loads(
        (trained_home / "checkpoints/reward_model/round-0003/auf_checkpoint.json").read_text()
    )
    assert record["loss"] == "bradley-terry" and record["kind"] == "reward_model"
    assert not {"loss", "dpo_beta", "simpo_gamma"} & set(record["settings"])
    policy = json.loads(
        (trained_home / "checkpoints/dpo_policy/round-0003/auf_checkpoint.json").read_text()
    )
    assert policy["loss"] == "dpo" and policy["settings"]["dpo_beta"] == 0.1
    assert policy["metrics"]["steps"] == 2 and policy["metrics"]["loss_last"] is not None


def test_the_loading_snippets_of_the_docs_run(trained_home, tmp_path, monkeypatch):
    """docs/training.md's snippets, from the repository root (home `.auf`), after a move."""
    snippets = [b for b in _python_blocks(DOCS.read_text()) if "checkpoints/" in b]
    policy_code = next(b for b in snippets if "dpo_policy/round-0003" in b)
    reward_code = next(b for b in snippets if "reward_model/round-0003" in b)
    repo = tmp_path / "copied"
    shutil.move(trained_home.parent, repo)  # a shared or moved home
    monkeypatch.chdir(repo)

    loaded = _run(policy_code)
    prompts, chosen = [r["prompt"] for r in toy_rows(2)], [r["chosen"] for r in toy_rows(2)]
    tokenizer, model = load_policy(
        repo / ".auf/models/tiny-chat", repo / ".auf/checkpoints/dpo_policy/round-0003", "cpu"
    )
    np.testing.assert_allclose(
        response_logps(loaded["policy"], loaded["tokenizer"], prompts, chosen),
        response_logps(model, tokenizer, prompts, chosen),
        rtol=1e-5,
    )

    reward = _run(reward_code)["reward"]
    tokenizer, model = load_reward_model(
        repo / ".auf/models/tiny-chat", repo / ".auf/checkpoints/reward_model/round-0003", "cpu"
    )
    # the same score as the project's own evaluation (the training input format)
    expected = reward_scores(model, tokenizer, [CONVERSATION])[0]
    assert reward == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


def test_small_data_notes():
    assert train_note(SMALL_TRAIN_PAIRS) is None
    assert "8 training pairs" in train_note(8) and "0.693" in train_note(8)
    assert heldout_note(0, "x") is None and heldout_note(SMALL_HELDOUT_PAIRS, "x") is None
    assert "4 held-out pairs" in heldout_note(4, "held-out accuracy")
