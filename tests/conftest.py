"""Shared fixtures: an isolated home directory and tiny random models built on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CORPUS = [
    "Rate the response from 1 to 5. The answer is 1 2 3 4 5.",
    "Explain photosynthesis in simple terms for a child.",
    "Write a short poem about the sea and the wind.",
    "def add(a, b): return a + b  # python code",
    "The capital of France is Paris. Water boils at 100 degrees.",
]


@pytest.fixture()
def auf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("AUF_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a byte-level BPE tokenizer, saved like a real checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_chat_lm_dir(tiny_lm_dir, tmp_path_factory) -> Path:
    """The tiny Llama with a chat template (training formats conversations with it)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-chat-llama")
    shutil.copytree(tiny_lm_dir, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def rounds_home(tmp_path_factory, tiny_lm_dir) -> Path:
    """A home with two real rounds (tiny random models, rubric judge); treat it as read-mostly."""
    import dagster as dg
    from test_round import materialize_round

    from auf_assets.prompts import prompt_pool
    from resources.store import DuckDBStore

    home = tmp_path_factory.mktemp("rounds-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUF_HOME", str(home))
        instance = dg.DagsterInstance.ephemeral()
        assert dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
        for key in ("round-0001", "round-0002"):
            assert materialize_round(instance, key, tiny_lm_dir).success
    return home


@pytest.fixture()
def home(rounds_home, monkeypatch) -> Path:
    """`rounds_home` as the current AUF_HOME."""
    monkeypatch.setenv("AUF_HOME", str(rounds_home))
    return rounds_home
