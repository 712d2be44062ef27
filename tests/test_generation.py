"""Generation edges: characters split across tokens, prompts longer than the context, and an
interrupt (Ctrl-C) during a long generation."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from resources import transformers_lm
from resources.lm_types import whole_characters
from resources.loaded_models import LOADED
from resources.openai_api import ChatEndpoint, OpenAILM
from resources.transformers_lm import TransformersLM
from tests.openai_server import FakeServer

MIXED = "SELECT DUAL \u00e9 AS \u540d\u524d"  # é: 2 bytes, 名 and 前: 3 bytes each


def test_the_tiny_tokenizer_splits_characters(tiny_lm_dir):
    lm = TransformersLM(str(tiny_lm_dir), device="cpu", dtype="fp32")
    ids = lm.tokenizer(MIXED, add_special_tokens=False)["input_ids"]
    cuts = [lm.tokenizer.decode(ids[:n]) for n in range(len(ids) + 1)]
    assert sum("\ufffd" in c for c in cuts) >= 3  # the premise: cuts inside characters
    for cut in cuts:
        kept = whole_characters(cut)
        assert "\ufffd" not in kept and MIXED.startswith(kept)
    # A lead byte the model never continued, in the middle of an answer.
    lead = lm.tokenizer("\u00e9", add_special_tokens=False)["input_ids"][0]
    broken = lm.tokenizer("SELECT DUAL", add_special_tokens=False)["input_ids"] + [lead]
    broken += lm.tokenizer(" AS", add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.decode(broken) == "SELECT DUAL\ufffd AS"
    assert whole_characters(lm.tokenizer.decode(broken)) == "SELECT DUAL AS"


def _speaking_only(lm: TransformersLM, tokens: list[int]) -> None:
    """Give the model an output layer that puts all probability on `tokens`, equally."""
    hidden = lm.model.config.hidden_size
    head = torch.nn.Linear(hidden, lm.model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        head.bias[tokens] = 0.0
    lm.model.lm_head = head


def test_max_new_tokens_ending_inside_a_character_leaves_no_broken_character(tiny_lm_dir, tmp_path):
    own = shutil.copytree(tiny_lm_dir, tmp_path / "model")  # its own copy in the model cache
    lm = TransformersLM(str(own), device="cpu", dtype="fp32")
    lead, continuation = lm.tokenizer("\u00e9", add_special_tokens=False)["input_ids"]
    conv = [[{"role": "user", "content": "Say e with an accent."}]]
    _speaking_only(lm, [lead])
    cut = lm.generate(conv, max_new_tokens=1, temperature=0.0, top_p=1.0, seed=0)[0]
    assert cut.text == "" and cut.finish_reason == "length" and cut.completion_tokens == 1
    # Both bytes of é in random order: whole characters survive, broken ones do not.
    _speaking_only(lm, [lead, continuation])
    outs = lm.generate(conv * 4, max_new_tokens=9, temperature=1.0, top_p=1.0, seed=1)
    assert all(o.completion_tokens == 9 for o in outs)
    assert all(set(o.text) <= {"\u00e9"} for o in outs) and any(o.text for o in outs)
    LOADED.clear()


def test_a_server_answer_cut_inside_a_character(tiny_lm_dir):
    fake = FakeServer(str(tiny_lm_dir))
    fake.reply = "SELECT DUAL\ufffd AS \u540d\ufffd"  # what a lossy decode on the server sends
    with fake.running() as url:
        lm = OpenAILM("tiny", ChatEndpoint(url, max_retries=0))
        out = lm.generate(
            [[{"role": "user", "content": "q"}]], max_new_tokens=5, temperature=0, top_p=1, seed=0
        )
    assert out[0].text == "SELECT DUAL AS \u540d"


class Interrupted(Exception):
    """What Dagster's signal handler raises in a step (DagsterExecutionInterruptedError)."""


def test_an_interrupt_during_server_requests_drops_the_ones_not_sent(tiny_lm_dir):
    fake = FakeServer(str(tiny_lm_dir), slow_s=1.0)
    fake.faults = ["timeout"] * 12  # each answer takes a second; one request at a time

    def interrupt(*_):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    with fake.running() as url:
        lm = OpenAILM("tiny", ChatEndpoint(url, max_concurrency=1, max_retries=0))
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            with pytest.raises(Interrupted):
                lm.generate(
                    [[{"role": "user", "content": f"q{i}"}] for i in range(12)],
                    max_new_tokens=2,
                    temperature=0.0,
                    top_p=1.0,
                    seed=0,
                )
            stopped = time.monotonic() - started
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    assert stopped < 3.0, f"the interrupt took {stopped:.1f} s (the 12 requests were all sent)"


def test_a_prompt_longer_than_the_context_keeps_its_start_and_its_end(tiny_lm_dir):
    lm = TransformersLM(str(tiny_lm_dir), device="cpu", dtype="fp32")
    context = lm.context_length
    middle = " ".join(["the sea and the wind"] * context)  # several contexts long
    text = lm._render([{"role": "user", "content": f"Write a poem. {middle} Answer in French."}])
    enc = lm._encode([text, "short"], room=16)
    assert enc["input_ids"].shape == (2, context - 16)
    kept = lm.tokenizer.decode(enc["input_ids"][0])
    assert kept.startswith(text[:40]) and kept.endswith("Answer in French.\n<|assistant|>\n")
    assert transformers_lm.CONTEXT_CUT_MARKER in kept
    # The short prompt is left-padded, untouched.
    row = enc["input_ids"][1][enc["attention_mask"][1].bool()]
    assert lm.tokenizer.decode(row) == "short"
    gen = lm.generate(
        [[{"role": "user", "content": middle}]],
        max_new_tokens=4,
        temperature=0.0,
        top_p=1.0,
        seed=0,
    )[0]
    assert gen.prompt_tokens == context - 4


def test_a_long_prompt_is_read_in_chunks(tiny_lm_dir):
    lm = TransformersLM(str(tiny_lm_dir), device="cpu", dtype="fp32")
    widths: list[int] = []

    def record(_module, _args, kwargs):
        widths.append(kwargs["input_ids"].shape[1])

    handle = lm.model.register_forward_pre_hook(record, with_kwargs=True)
    conv = [[{"role": "user", "content": " ".join(["the sea and the wind"] * 300)}]]
    try:
        chunked = lm.generate(conv, max_new_tokens=3, temperature=0.0, top_p=1.0, seed=0)
    finally:
        handle.remove()
    assert chunked[0].prompt_tokens > 2 * transformers_lm.PREFILL_CHUNK_TOKENS
    assert max(widths) <= transformers_lm.PREFILL_CHUNK_TOKENS  # no operation over the whole prompt
    whole = lm.model.generate(
        **lm._encode([lm._render(conv[0])]), max_new_tokens=3, do_sample=False
    )
    assert lm.tokenizer.decode(whole[0, -3:]).strip() == chunked[0].text


CHILD = textwrap.dedent(
    """
    import sys, time
    import dagster as dg
    import torch
    from resources.transformers_lm import TransformersLM

    lm = TransformersLM(sys.argv[1], device="cpu", dtype="fp32")
    attention = torch.nn.functional.scaled_dot_product_attention

    def announced(*args, **kwargs):  # says when the attention over the prompt begins
        if attention is not torch.nn.functional.scaled_dot_product_attention:
            torch.nn.functional.scaled_dot_product_attention = attention
            print("attention", flush=True)
        return attention(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = announced
    prompt = " ".join(["the sea and the wind"] * 5000)

    @dg.asset
    def long_generation():
        try:
            lm.generate([[{"role": "user", "content": prompt}]], max_new_tokens=64,
                        temperature=0.0, top_p=1.0, seed=0)
        except BaseException as exc:
            print(f"stopped at {time.time()} by {type(exc).__name__}", flush=True)
            raise

    result = dg.materialize([long_generation], raise_on_error=False)
    print("success" if result.success else "failed", flush=True)
    """
)


def _wide_model(tiny_lm_dir: Path, folder: Path) -> Path:
    """The tiny tokenizer with a one-layer model whose attention over a long prompt is one
    operation of tens of seconds when the prompt is read whole."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.process
def test_an_interrupt_stops_a_long_generation_within_seconds(tiny_lm_dir, tmp_path):
    model = _wide_model(tiny_lm_dir, tmp_path / "wide")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DAGSTER_HOME": str(tmp_path)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in child.stdout], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not seen or seen[-1].strip() != "attention":
            seen.append(lines.get(timeout=180))  # the child's start: imports, model, prompt
        time.sleep(1.0)  # inside the attention over the prompt (a minute when read whole)
        child.send_signal(signal.SIGINT)
        interrupted = time.time()
        child.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    out = "".join(seen) + "".join(lines.queue)
    stopped = re.search(r"stopped at ([0-9.]+) by DagsterExecutionInterruptedError", out)
    assert stopped and "success" not in out, out[-2000:]
    waited = float(stopped.group(1)) - interrupted
    assert waited < 8.0, f"the interrupt took {waited:.1f} s to stop the generation"
