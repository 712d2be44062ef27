"""The rubric LLM judge resource (spec section 3).

One call per (prompt, response, aspect); the aspect score is the expectation of the rating digit
under the judge's first-token distribution restricted to 1..5, read for every token that spells a
digit (exactly, where the backend can: transformers always, vLLM >= 0.33 and vLLM servers through
`logprob_token_ids`; elsewhere from the top-k). A response whose first token has
no digit among the top-k log-probs is asked again with the answer started for it ("Rating: "),
then its short greedy answer is parsed; if that fails too the aspect is recorded as failed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from auf_assets.core.judging import (
    ASPECTS,
    DIGITS,
    AspectScore,
    judge_messages,
    overall_score,
    score_from_text,
    score_from_top_logprobs,
)
from auf_assets.core.pairwise import (
    LETTERS,
    LetterChoice,
    choice_from_top_logprobs,
    pairwise_messages,
)
from auf_assets.core.seeding import stable_hash
from auf_assets.core.settings import PACKAGED_LM
from resources import home
from resources.engine import Backend, ServerSettings, chat_endpoint, placement
from resources.env_settings import EnvSettings
from resources.lm_backends import language_model
from resources.lm_types import Progress, Usage
from resources.loaded_models import release_gpu_models
from resources.store import CallCache

RETRY_PREFIX = "Rating: "


@dataclass(frozen=True)
class AspectJudgement:
    item: int  # index into the (prompt, response) lists
    aspect: str
    result: AspectScore
    attempts: int


class RubricJudge(EnvSettings):
    """Rates responses on the four UltraFeedback aspects with any chat model."""

    SETTINGS_NAME: ClassVar[str] = "judge"

    model: str = Field(default=PACKAGED_LM, description="judge model source")
    backend: Backend = "transformers"
    device: str = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    batch_size: int = Field(default=8, ge=1)
    top_k: int = Field(
        default=20,
        ge=1,
        description="first-token log-probs to look at (vLLM and servers cap it at max_logprobs); "
        "the digits 1-5 themselves are always read exactly where the backend can",
    )
    retry_with_prefix: bool = True
    parse_fallback: bool = Field(default=True, description="parse a short answer as last resort")
    max_prompt_chars: int = Field(
        default=3000,
        ge=100,
        description="a longer user prompt is shown to the judge as its start and its end, the "
        "middle cut with a marker (as generation does past a model's context)",
    )
    max_response_chars: int = Field(
        default=4000, ge=100, description="the response shown to the judge is cut here"
    )
    gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="vLLM: share of the GPU the judge's engine reserves"
    )
    enable_thinking: bool = Field(
        default=False, description="leave reasoning on in chat templates that have the switch"
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    save_every: int = Field(
        default=64, ge=1, description="judge calls between saves of the call cache"
    )

    @property
    def name(self) -> str:
        return f"rubric:{self.model}"

    def teardown_after_execution(self, context) -> None:
        release_gpu_models()

    def placement(self) -> dict:
        """Where the judge runs, as the ledger records it."""
        return placement(self.backend, self.server, self.device)

    def _lm(self):
        if self.backend != "transformers" and self.top_k > self.server.max_logprobs:
            raise ValueError(
                f"judge top_k {self.top_k} is above the {self.backend} backend's max_logprobs "
                f"{self.server.max_logprobs}: lower top_k, or raise server.max_logprobs to the "
                "server's --max-logprobs"
            )
        return language_model(
            self.backend,
            self.model,
            device=self.device,
            dtype=self.dtype,
            cache_dir=str(home.models_dir()),
            gpu_memory_utilization=self.gpu_memory_utilization,
            enable_thinking=self.enable_thinking,
            max_logprobs=self.server.max_logprobs,
            endpoint=chat_endpoint(self.server) if self.backend == "openai" else None,
        )

    def overall(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        progress: Progress | None = None,
        *,
        cache: CallCache | None = None,
        usage: Usage | None = None,
    ) -> tuple[np.ndarray, list[AspectJudgement]]:
        """Each response's overall score (mean of the aspects; NaN where an aspect failed)."""
        rated = self.rate(prompts, responses, progress=progress, cache=cache, usage=usage)
        matrix = np.full((len(prompts), len(ASPECTS)), np.nan)
        for r in rated:
            if not r.result.failed:
                matrix[r.item, ASPECTS.index(r.aspect)] = r.result.score
        return overall_score(matrix), rated

    def _cached_calls(
        self,
        stage: str,
        convs: list,
        ask: Callable[[list], list],
        cache: CallCache | None,
        usage: Usage | None,
    ) -> list:
        """`ask(convs)`, answered from the cache where an earlier attempt got the answer, and
        saved to it every `save_every` calls."""
        if cache is None:
            return ask(convs)
        keys = [
            stable_hash(self.name, self.backend, stage, self.top_k, json.dumps(c, sort_keys=True))
            for c in convs
        ]
        known = {k: json.loads(v) for k, v in cache.get(keys).items()}
        if usage is not None:
            usage.add(cached=sum(k in known for k in keys))
        return cache.fill(
            keys,
            known,
            lambda chunk, _start: ask([convs[i] for i in chunk]),
            every=self.save_every,
            dump=json.dumps,
        )

    def compare(
        self,
        prompts: Sequence[str],
        firsts: Sequence[str],
        seconds: Sequence[str],
        progress: Progress | None = None,
        *,
        cache: CallCache | None = None,
        usage: Usage | None = None,
    ) -> list[LetterChoice]:
        """Per (prompt, first, second): P(first better) from one A/B question (`core.pairwise`);
        the caller asks both orders. The same model, backend and limits as the rubric."""
        convs = [
            pairwise_messages(
                p,
                a,
                b,
                max_prompt_chars=self.max_prompt_chars,
                max_response_chars=self.max_response_chars,
            )
            for p, a, b in zip(prompts, firsts, seconds, strict=True)
        ]
        lm = self._lm()
        try:
            tops = self._cached_calls(
                "pairwise",
                convs,
                lambda chunk: lm.first_token_logprobs(
                    chunk,
                    top_k=self.top_k,
                    candidates=LETTERS,
                    batch_size=self.batch_size,
                    progress=progress,
                ),
                cache,
                usage,
            )
        finally:
            if usage is not None:
                usage.add(**lm.usage.snapshot())
        return [choice_from_top_logprobs(top) for top in tops]

    def rate(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        progress: Progress | None = None,
        *,
        cache: CallCache | None = None,
        usage: Usage | None = None,
    ) -> list[AspectJudgement]:
        """One judgement per (item, aspect); failures are recorded, never NaN."""
        lm = self._lm()
        try:
            return self._rate(lm, prompts, responses, progress, cache, usage)
        finally:
            if usage is not None:
                usage.add(**lm.usage.snapshot())

    def _rate(self, lm, prompts, responses, progress, cache, usage) -> list[AspectJudgement]:
        items = [(i, a) for i in range(len(prompts)) for a in ASPECTS]
        convs = [
            judge_messages(
                a,
                prompts[i],
                responses[i],
                max_prompt_chars=self.max_prompt_chars,
                max_response_chars=self.max_response_chars,
            )
            for i, a in items
        ]
        results: dict[int, AspectJudgement] = {}

        def tops(prefix: str, report: Progress | None):
            return lambda chunk: lm.first_token_logprobs(
                chunk,
                assistant_prefix=prefix,
                top_k=self.top_k,
                candidates=DIGITS,
                batch_size=self.batch_size,
                progress=report,
            )

        first = self._cached_calls("first", convs, tops("", progress), cache, usage)
        for k, top in enumerate(first):
            results[k] = AspectJudgement(*items[k], score_from_top_logprobs(top), 1)

        pending = [k for k, r in results.items() if r.result.failed]
        if pending and self.retry_with_prefix:
            again = self._cached_calls(
                "prefix", [convs[k] for k in pending], tops(RETRY_PREFIX, None), cache, usage
            )
            for k, top in zip(pending, again, strict=True):
                results[k] = AspectJudgement(*items[k], score_from_top_logprobs(top), 2)

        pending = [k for k, r in results.items() if r.result.failed]
        if pending and self.parse_fallback:
            texts = self._cached_calls(
                "text",
                [convs[k] for k in pending],
                lambda chunk: [
                    g.text
                    for g in lm.generate(
                        chunk,
                        max_new_tokens=8,
                        temperature=0.0,
                        top_p=1.0,
                        seed=0,
                        batch_size=self.batch_size,
                    )
                ],
                cache,
                usage,
            )
            for k, text in zip(pending, texts, strict=True):
                parsed = score_from_text(text)
                if parsed.failed:
                    parsed = AspectScore(
                        None,
                        True,
                        f"no digit 1-5 in the first-token log-probs (twice) nor in the "
                        f"answer {text[:40]!r}",
                        results[k].result.digit_mass,
                    )
                results[k] = AspectJudgement(*items[k], parsed, 3)
        return [results[k] for k in range(len(items))]
