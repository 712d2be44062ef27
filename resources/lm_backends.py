"""Language-model backends shared by the generation engine and the judge, and
`language_model`, which builds the one a resource's config names.

All three implement the same two calls, `generate` and `first_token_logprobs`:
`TransformersLM` (CPU or one GPU, batched `generate`, `resources.transformers_lm`), `VLLMLM`
(GPU, the `gpu` extra, `resources.vllm_lm`) and `OpenAILM` (a server speaking the OpenAI API,
`resources.openai_api`). They take and answer with the types in `resources.lm_types`; model
sources and loading are in `resources.model_loading`.
"""

from __future__ import annotations


def language_model(
    backend: str,
    source: str,
    *,
    device: str,
    dtype: str,
    cache_dir: str | None,
    gpu_memory_utilization: float = 0.85,
    enable_thinking: bool = False,
    max_logprobs: int = 20,
    endpoint=None,
):
    """The backend named in a resource's config (`endpoint`: a ChatEndpoint for `openai`).

    Each backend is imported when it is built: reading a resource's settings (the CLI checks
    them before any work) must not load torch."""
    if backend == "transformers":
        from resources.transformers_lm import TransformersLM

        return TransformersLM(
            source, device=device, dtype=dtype, cache_dir=cache_dir, enable_thinking=enable_thinking
        )
    if backend == "vllm":
        from resources.vllm_lm import VLLMLM

        return VLLMLM(
            source,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            device=device,
            enable_thinking=enable_thinking,
            max_logprobs=max_logprobs,
        )
    if backend == "openai":
        if endpoint is None:
            raise ValueError("backend 'openai' needs a base_url")
        from resources.openai_api import OpenAILM

        return OpenAILM(
            source, endpoint, enable_thinking=enable_thinking, max_logprobs=max_logprobs
        )
    raise ValueError(f"backend must be 'transformers', 'vllm' or 'openai', got {backend!r}")
