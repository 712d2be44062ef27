"""The rubric LLM judge resource (spec section 3).

One call per (prompt, response, aspect); the aspect score is the expectation of the rating digit
under the judge's first-token distribution restricted to 1..5. A response whose first token has
no digit among the top-k log-probs is asked again with the answer started for it ("Rating: "),
then its short greedy answer is parsed; if that fails too the aspect is recorded as failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dagster as dg
import numpy as np
from pydantic import Field

from auf_assets.core.judging import (
    ASPECTS,
    AspectScore,
    judge_messages,
    overall_score,
    score_from_text,
    score_from_top_logprobs,
)
from resources import home
from resources.models import Progress, language_model

RETRY_PREFIX = "Rating: "


@dataclass(frozen=True)
class AspectJudgement:
    item: int  # index into the (prompt, response) lists
    aspect: str
    result: AspectScore
    attempts: int


class RubricJudge(dg.ConfigurableResource):
    """Rates responses on the four UltraFeedback aspects with any chat model."""

    model: str = Field(default="smollm2-135m-instruct", description="judge model source")
    backend: Literal["transformers", "vllm"] = "transformers"
    device: str = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    batch_size: int = Field(default=8, ge=1)
    top_k: int = Field(default=20, ge=1, description="first-token log-probs to look at")
    retry_with_prefix: bool = True
    parse_fallback: bool = Field(default=True, description="parse a short answer as last resort")

    @property
    def name(self) -> str:
        return f"rubric:{self.model}"

    def _lm(self):
        return language_model(
            self.backend,
            self.model,
            device=self.device,
            dtype=self.dtype,
            cache_dir=str(home.models_dir()),
        )

    def overall(
        self, prompts: Sequence[str], responses: Sequence[str], progress: Progress | None = None
    ) -> tuple[np.ndarray, list[AspectJudgement]]:
        """Each response's overall score (mean of the aspects; NaN where an aspect failed)."""
        rated = self.rate(prompts, responses, progress=progress)
        matrix = np.full((len(prompts), len(ASPECTS)), np.nan)
        for r in rated:
            if not r.result.failed:
                matrix[r.item, ASPECTS.index(r.aspect)] = r.result.score
        return overall_score(matrix), rated

    def rate(
        self, prompts: Sequence[str], responses: Sequence[str], progress: Progress | None = None
    ) -> list[AspectJudgement]:
        """One judgement per (item, aspect); failures are recorded, never NaN."""
        lm = self._lm()
        items = [(i, a) for i in range(len(prompts)) for a in ASPECTS]
        convs = [judge_messages(a, prompts[i], responses[i]) for i, a in items]
        results: dict[int, AspectJudgement] = {}

        tops = lm.first_token_logprobs(
            convs, top_k=self.top_k, batch_size=self.batch_size, progress=progress
        )
        for k, top in enumerate(tops):
            results[k] = AspectJudgement(*items[k], score_from_top_logprobs(top), 1)

        pending = [k for k, r in results.items() if r.result.failed]
        if pending and self.retry_with_prefix:
            tops = lm.first_token_logprobs(
                [convs[k] for k in pending],
                assistant_prefix=RETRY_PREFIX,
                top_k=self.top_k,
                batch_size=self.batch_size,
            )
            for k, top in zip(pending, tops, strict=True):
                results[k] = AspectJudgement(*items[k], score_from_top_logprobs(top), 2)

        pending = [k for k, r in results.items() if r.result.failed]
        if pending and self.parse_fallback:
            texts = lm.generate(
                [convs[k] for k in pending],
                max_new_tokens=8,
                temperature=0.0,
                top_p=1.0,
                seed=0,
                batch_size=self.batch_size,
            )
            for k, gen in zip(pending, texts, strict=True):
                parsed = score_from_text(gen.text)
                if parsed.failed:
                    parsed = AspectScore(
                        None,
                        True,
                        f"no digit 1-5 in the top-{self.top_k} log-probs (twice) nor in the "
                        f"answer {gen.text[:40]!r}",
                        results[k].result.digit_mass,
                    )
                results[k] = AspectJudgement(*items[k], parsed, 3)
        return [results[k] for k in range(len(items))]
