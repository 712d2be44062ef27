"""Tokens of a real pool's generation requests, responses and rubric judge calls: the inputs of
the GPU-hour estimate in docs/scaling.md section 3 (`bench_store_scale.py --tokens`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl


def token_stats(pool_path: Path, tokenizer_dir: Path, sample: int = 1000) -> dict:
    """Tokens of real requests, for the GPU-hour estimate: a generation request (principle
    system prompt + prompt, chat template), a response, and one rubric judge call."""
    from transformers import AutoTokenizer

    from auf_assets.core.judging import ASPECTS as JUDGE_ASPECTS
    from auf_assets.core.judging import judge_messages
    from auf_assets.core.principles import choose_system_prompt

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    pool = pl.read_parquet(pool_path)
    prompts = pool.unique("prompt_id").sort("prompt_id")

    def chat_len(messages: list[dict]) -> int:
        enc = tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return len(enc["input_ids"])

    requests = [
        chat_len(
            [
                {"role": "system", "content": choose_system_prompt(s, f"{p}|member", 0)[1]},
                {"role": "user", "content": q},
            ]
        )
        for p, s, q in prompts.select("prompt_id", "source", "prompt").iter_rows()
    ]
    responses = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in pool["response"]]
    rows = pool.sample(min(sample, pool.height), seed=0)
    judge = [
        chat_len(judge_messages(a, q, r))
        for q, r in rows.select("prompt", "response").iter_rows()
        for a in JUDGE_ASPECTS
    ]

    def dist(x: list[int]) -> dict:
        v = np.asarray(x)
        return {
            "n": int(v.size),
            "mean": float(v.mean()),
            "p50": float(np.median(v)),
            "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)),
            "max": int(v.max()),
        }

    return {
        "pool": str(pool_path),
        "tokenizer": str(tokenizer_dir),
        "prompts": prompts.height,
        "responses": pool.height,
        "generation_request_tokens": dist(requests),
        "response_tokens": dist(responses),
        "judge_call_tokens": dist(judge),
        # The part of a judge call that is the same for every call of an aspect (system prompt,
        # aspect, rubric, instruction): what a server's prefix cache can reuse.
        "judge_fixed_tokens": {a: chat_len(judge_messages(a, "", "")) for a in JUDGE_ASPECTS},
        "response_bytes_mean": float(pool["response"].str.len_bytes().mean()),
    }
