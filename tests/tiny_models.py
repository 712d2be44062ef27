"""Tiny random models built on the fly, for the test fixtures and the golden-output recorder."""

from __future__ import annotations

import shutil
from pathlib import Path

CORPUS = [
    "Rate the response from 1 to 5. The answer is 1 2 3 4 5.",
    "Explain photosynthesis in simple terms for a child.",
    "Write a short poem about the sea and the wind.",
    "def add(a, b): return a + b  # python code",
    "The capital of France is Paris. Water boils at 100 degrees.",
]


def build_tiny_lm(folder: Path) -> Path:
    """A 2-layer random Llama with a byte-level BPE tokenizer, saved like a real checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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


def with_chat_template(source: Path, folder: Path) -> Path:
    """A copy of a tiny model with a chat template (training formats conversations with it)."""
    from transformers import AutoTokenizer

    shutil.copytree(source, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tokenizer.save_pretrained(folder)
    return folder
