"""Where models live: one per GPU at a time, freed explicitly, loaded in the configured dtype,
and a GPU of its own for each concurrent step."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from auf_assets.core.judging import judge_messages
from resources import models
from resources.models import LoadedModels, load_tokenizer_and_model


def test_one_model_per_gpu_and_an_lru_on_the_cpu():
    freed: list[str] = []
    cache = LoadedModels(cpu_slots=2)

    def get(name, slot):
        return cache.get((name,), slot, lambda: f"model {name}", freed.append)

    assert get("a", "cuda:0") == "model a"
    assert get("a", "cuda:0") == "model a" and freed == []  # cached
    get("b", "cuda:1")  # another GPU: both stay
    get("c", "cuda:0")  # same GPU: a goes first (two engines would not fit)
    assert freed == ["model a"]
    get("x", None), get("y", None), get("x", None), get("z", None)  # CPU: LRU of 2
    assert freed == ["model a", "model y"]
    assert cache.release("cuda") == 2 and freed[-2:] == ["model b", "model c"]
    assert get("x", None) == "model x"  # CPU models survive a GPU release


def test_weights_load_in_the_configured_dtype(tiny_lm_dir):
    _, bf16 = load_tokenizer_and_model(str(tiny_lm_dir), "causal", "cpu", None, "bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    # `auto` on the CPU: fp32 weights under bf16 autocast (measured faster than bf16 weights).
    _, auto = load_tokenizer_and_model(str(tiny_lm_dir), "causal", "cpu", None, "auto")
    assert next(auto.parameters()).dtype == torch.float32
    assert models.weights_dtype("auto", torch.device("cpu")) == torch.float32


def test_concurrent_steps_claim_different_gpus(tmp_path, monkeypatch):
    """Two processes on a 2-GPU machine (of one home or two): the second does not land on GPU 0."""
    monkeypatch.setenv("AUF_GPU_CLAIMS", str(tmp_path / "claims"))
    monkeypatch.setattr(models, "_CLAIMED_GPU", None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert models.claim_gpu() == 0
    child = textwrap.dedent(
        """
        import torch
        torch.cuda.device_count = lambda: 2
        torch.cuda.mem_get_info = lambda i: (1, 1)
        from resources import models
        print(models.claim_gpu())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "1"


def test_the_judge_prompt_is_bounded_too():
    user = judge_messages("honesty", "Q" + "q" * 48 + "?", "r", max_prompt_chars=10)[1]["content"]
    # The start and the end (the question asked last), the middle cut (as in generation).
    assert "Qqqqqqqq\n\n[... 40 characters of the prompt not shown here ...]\n\nq?" in user
    assert "q" * 8 not in user


def test_a_vllm_engine_is_shut_down_when_freed():
    calls = []

    class Core:
        def shutdown(self):
            calls.append("shutdown")

    class Engine:
        engine_core = Core()

    class FakeLLM:
        llm_engine = Engine()

    cache = LoadedModels()
    cache.get(("v1",), "vllm:cpu", FakeLLM, models._stop_vllm)
    cache.get(("v2",), "vllm:cpu", FakeLLM, models._stop_vllm)
    assert calls == ["shutdown"]
