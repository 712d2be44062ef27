"""The synthetic round history: random-ish text of realistic length and every row a round writes.

`Synth(seed, ...)` makes the same rows for the same seed and the same sequence of calls, so two
stores built side by side (DuckDB and Postgres) hold the same history.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl

# Encoder settings of the pipeline by feature size (their real cache keys are looked up lazily:
# importing the encoder resource imports torch).
KNOWN_DIMS = {
    42: "text-stats",  # the default: text statistics
    384: "minilm",  # MiniLM alone
    426: "minilm+text-stats",  # MiniLM + text statistics
}
SOURCES = ("evol_instruct", "false_qa", "flan_v2_niv2", "sharegpt", "ultrachat", "truthful_qa")
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")


def encoder_key(dim: int) -> str:
    if dim in KNOWN_DIMS:
        from resources.encoder import FeatureEncoder

        return FeatureEncoder(encoder=KNOWN_DIMS[dim]).key
    return f"synthetic-d{dim}|z1"


def round_id_of(index: int) -> str:
    return f"round-{index:04d}"


class Synth:
    """Random-ish text (Zipf-weighted pseudo-words) and the rows of one round."""

    def __init__(
        self, seed: int, members: int, round_size: int, response_bytes: float, stream_mb: int = 48
    ):
        from resources.engine import GenerationEngine
        from resources.judge import RubricJudge

        self.rng = np.random.default_rng(seed)
        self.round_size = round_size
        self.gen_save_every = GenerationEngine().save_every
        self.judge_save_every = RubricJudge().save_every
        rng = self.rng
        letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
        weights = 1.0 / np.arange(1, 27)
        lengths = rng.integers(1, 11, size=20_000)
        vocab = ["".join(rng.choice(letters, size=n, p=weights / weights.sum())) for n in lengths]
        zipf = 1.0 / (np.arange(len(vocab)) + 2.7)
        n_words = stream_mb * 1024 * 1024 // 6
        idx = rng.choice(len(vocab), size=n_words, p=zipf / zipf.sum())
        seps = rng.choice([" ", " ", " ", " ", " ", " ", " ", ", ", ". ", ".\n"], size=n_words)
        vocab_arr = np.array(vocab, dtype=object)
        self.stream = "".join((vocab_arr[idx] + seps).tolist())
        self.members = [f"m{m:02d}" for m in range(members)]
        # Response lengths: log-normal, mean `response_bytes` (sigma 0.6), clipped.
        self.sigma = 0.6
        self.median = response_bytes / np.exp(self.sigma**2 / 2)
        self.sampling = {
            m: json.dumps({"max_new_tokens": 4096, "style": "", "temperature": 1.0, "top_p": 1.0})
            for m in self.members
        }

    def texts(self, n: int, median: float, sigma: float, lo: int, hi: int) -> list[str]:
        sizes = np.clip(self.rng.lognormal(np.log(median), sigma, size=n), lo, hi).astype(int)
        starts = self.rng.integers(0, len(self.stream) - hi - 1, size=n)
        pieces = zip(starts.tolist(), sizes.tolist(), strict=True)
        return [self.stream[s : s + k] for s, k in pieces]

    def hex_ids(self, prefix: str, n: int) -> list[str]:
        return [f"{prefix}{x:016x}" for x in self.rng.integers(0, 2**63, size=n).tolist()]

    def prompts(self, n: int) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "prompt_id": self.hex_ids("p-", n),
                "prompt": self.texts(n, 300.0, 1.0, 16, 8000),
                "source": self.rng.choice(SOURCES, size=n).tolist(),
            }
        )

    def round_rows(self, index: int, prompts: pl.DataFrame, dim: int) -> dict:
        """Every row one round writes, as the assets write them (and its feature block)."""
        from auf_assets.core.principles import choose_system_prompt
        from resources.store import utcnow

        rid = round_id_of(index)
        prev = round_id_of(index - 1) if index > 1 else None
        n_p, n_m = prompts.height, len(self.members)
        n = n_p * n_m
        pids = prompts["prompt_id"].to_list() * n_m
        srcs = prompts["source"].to_list() * n_m
        members = [m for m in self.members for _ in range(n_p)]
        chosen = [
            choose_system_prompt(s, f"{p}|{m}", 0)
            for p, s, m in zip(pids, srcs, members, strict=True)
        ]
        responses = self.texts(n, self.median, self.sigma, 64, 16_000)
        cids = self.hex_ids("c-", n)
        now = utcnow()
        completions = pl.DataFrame(
            {
                "completion_id": cids,
                "round_id": rid,
                "prompt_id": pids,
                "member": members,
                "model": [f"/models/{m}" for m in members],
                "principle": [c[0] for c in chosen],
                "system_prompt": [c[1] for c in chosen],
                "response": responses,
                "prompt_tokens": [(len(c[1]) + 300) // 4 for c in chosen],
                "completion_tokens": [len(r) // 4 for r in responses],
                "finish_reason": self.rng.choice(["stop"] * 19 + ["length"], size=n).tolist(),
                "sampling": [self.sampling[m] for m in members],
                "created_at": now,
            },
            schema_overrides={"prompt_tokens": pl.Int32, "completion_tokens": pl.Int32},
        )
        mu = self.rng.standard_normal(n)
        sigma = np.abs(self.rng.standard_normal(n)) * 0.1 + 0.05
        scores = pl.DataFrame(
            {
                "completion_id": cids,
                "prompt_id": pids,
                "round_id": rid,
                "reward_model_round": pl.Series([prev] * n, dtype=pl.String),
                "reward_model_path": pl.Series(
                    [f"reward_models/{prev}.0123456789ab.safetensors" if prev else None] * n,
                    dtype=pl.String,
                ),
                "mu": mu,
                "sigma": sigma,
            }
        )
        # One pair per prompt: two distinct members (completion k*n_p + i answers prompt i).
        a = self.rng.integers(0, n_m, size=n_p)
        b = (a + self.rng.integers(1, n_m, size=n_p)) % n_m
        ia, ib = a * n_p + np.arange(n_p), b * n_p + np.arange(n_p)
        pair_ids = self.hex_ids("pr-", n_p)
        pairs = pl.DataFrame(
            {
                "pair_id": pair_ids,
                "round_id": rid,
                "prompt_id": prompts["prompt_id"],
                "completion_a": [cids[i] for i in ia],
                "completion_b": [cids[i] for i in ib],
                "method": "deltaucb",
                "beta": 1.0,
                "seed": pl.Series([index] * n_p, dtype=pl.Int64),
                "mu_a": mu[ia],
                "mu_b": mu[ib],
                "sigma_a": sigma[ia],
                "sigma_b": sigma[ib],
                "created_at": now,
            }
        )
        judged = [cids[i] for i in np.concatenate([ia, ib])]
        n_j = len(judged) * len(ASPECTS)
        judge_scores = pl.DataFrame(
            {
                "round_id": rid,
                "completion_id": [c for c in judged for _ in ASPECTS],
                "aspect": list(ASPECTS) * len(judged),
                "judge": "rubric:/models/judge-70b",
                "score": self.rng.uniform(1, 5, size=n_j),
                "failed": False,
                "reason": pl.Series([None] * n_j, dtype=pl.String),
                "digit_mass": self.rng.uniform(0.9, 1.0, size=n_j),
                "attempts": pl.Series([1] * n_j, dtype=pl.Int32),
            }
        )
        pref = self.rng.choice(["a"] * 47 + ["b"] * 47 + ["tie"] * 4 + ["failed"] * 2, size=n_p)
        ca = pairs["completion_a"].to_list()
        cb = pairs["completion_b"].to_list()
        triples = list(zip(pref.tolist(), ca, cb, strict=True))
        chosen_ids = [x if p == "a" else y if p == "b" else None for p, x, y in triples]
        rejected_ids = [y if p == "a" else x if p == "b" else None for p, x, y in triples]
        judgements = pl.DataFrame(
            {
                "pair_id": pair_ids,
                "round_id": rid,
                "prompt_id": prompts["prompt_id"],
                "score_a": self.rng.uniform(1, 5, size=n_p),
                "score_b": self.rng.uniform(1, 5, size=n_p),
                "preference": pref.tolist(),
                "chosen_completion_id": pl.Series(chosen_ids, dtype=pl.String),
                "rejected_completion_id": pl.Series(rejected_ids, dtype=pl.String),
                "labeller": "rubric:/models/judge-70b",
                "labelled_at": now,
                "source": "llm_judge",
                "n_labels": pl.Series([0 if p == "failed" else 1 for p in pref], dtype=pl.Int32),
                "votes": pl.Series([None] * n_p, dtype=pl.String),
                "raw_choices": pref.tolist(),
            }
        )
        reward_models = pl.DataFrame(
            {
                "round_id": [rid],
                "path": [f"reward_models/{rid}.0123456789ab.safetensors"],
                "encoder": ["(set by the caller)"],
                "pairs_trained": [min(6400, index * n_p)],
                "prompts_done": [index * n_p],
                "loss_before": [0.69],
                "loss_after": [0.65],
                "created_at": [now],
                "base_round": pl.Series([prev], dtype=pl.String),
                "base_path": pl.Series(
                    [f"reward_models/{prev}.0123456789ab.safetensors" if prev else None],
                    dtype=pl.String,
                ),
                "replay_rounds": ["[]"],
                "replay_sha256": ["0" * 64],
                "replay_capacity": pl.Series([6400], dtype=pl.Int32),
            }
        )
        return {
            "round_id": rid,
            "index": index,
            "completions": completions,
            "features": self.rng.standard_normal((n, dim), dtype=np.float32),
            "reward_scores": scores,
            "pairs": pairs,
            "judge_scores": judge_scores,
            "judgements": judgements,
            "reward_models": reward_models,
            "response_bytes": int(sum(len(r) for r in responses)),
        }
