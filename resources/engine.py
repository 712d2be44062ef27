"""The generation engine resource: turns conversations into responses on CPU, GPU or a server."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import ClassVar, Literal

import dagster as dg
from pydantic import Field

from auf_assets.core.devices import choose_device
from resources import home
from resources.env_settings import EnvSettings
from resources.lm_backends import language_model
from resources.lm_types import Conversation, Generation, Progress, Usage
from resources.loaded_models import release_gpu_models

Backend = Literal["transformers", "vllm", "openai"]


class ServerSettings(dg.Config):
    """How to reach OpenAI-compatible servers (the `openai` backend); shared by engine and judge.

    The API key is read from the environment variable `api_key_env` when a request is made; it
    is never part of the config, the logs or the metadata.
    """

    base_url: str = Field(
        default="", description="http(s)://host:port/v1 of an OpenAI-compatible server"
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="environment variable that holds the API key (unset: no key is sent)",
    )
    max_concurrency: int = Field(default=8, ge=1, description="requests in flight per server")
    timeout_s: float = Field(default=120.0, gt=0, description="seconds to wait for one answer")
    max_retries: int = Field(default=5, ge=0, description="retries on 429/5xx/timeouts")
    max_logprobs: int = Field(
        default=20, ge=1, description="the server's cap on top log-probs (vLLM: --max-logprobs)"
    )
    gpus: float = Field(
        default=0.0, ge=0, description="GPUs behind the server, to count GPU-seconds (0: unknown)"
    )


def chat_endpoint(settings: ServerSettings, base_url: str = "", api_key_env: str = ""):
    """The ChatEndpoint for `settings`, with a member's own base URL or key variable if given.

    One per (server, key, limits) in a process, so its connections, its check of the model
    name and what it learnt about the server's extensions last across the chunks of a step.
    """
    url = base_url or settings.base_url
    if not url:
        raise ValueError("backend 'openai' needs a base_url (the server's http://host:port/v1)")
    key_env = api_key_env or settings.api_key_env
    return _endpoint(
        url.rstrip("/"),
        os.environ.get(key_env, "") if key_env else "",
        settings.max_concurrency,
        settings.timeout_s,
        settings.max_retries,
    )


@functools.lru_cache(maxsize=32)
def _endpoint(url: str, api_key: str, max_concurrency: int, timeout_s: float, max_retries: int):
    from resources.openai_api import ChatEndpoint

    return ChatEndpoint(
        url,
        api_key=api_key,
        max_concurrency=max_concurrency,
        timeout_s=timeout_s,
        max_retries=max_retries,
    )


def placement(backend: str, server: ServerSettings, device: str, base_url: str = "") -> dict:
    """`backend`, `endpoint`, `device` and `gpus` of a model step (the ledger's columns): a
    server's address and how many GPUs its config says back it, or the local device."""
    if backend == "openai":
        return {
            "backend": backend,
            "endpoint": (base_url or server.base_url).rstrip("/"),
            "device": None,
            "gpus": server.gpus,
        }
    return {
        "backend": backend,
        "endpoint": None,
        "device": str(choose_device(device)),
        "gpus": 0.0,
    }


class GenerationEngine(EnvSettings):
    """Batched text generation: `transformers` runs anywhere, `vllm` is the GPU engine, and
    `openai` sends the requests to any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp,
    hosted APIs). A pool member may name its own backend and server."""

    SETTINGS_NAME: ClassVar[str] = "engine"

    backend: Backend = "transformers"
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N (local backends)")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="weights and compute: auto = bf16 weights on a GPU, bf16 autocast over fp32 "
        "weights on the CPU (1.1x fp32 at batch 8)",
    )
    batch_size: int = Field(default=8, ge=1, description="sequences per generate call")
    gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="vLLM: share of the GPU one engine may reserve"
    )
    enable_thinking: bool = Field(
        default=False,
        description="leave reasoning on in chat templates that have the switch (Qwen3's)",
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    save_every: int = Field(
        default=32,
        ge=1,
        description="responses generated between saves of the call cache, so a failed round "
        "asks again only for what is missing",
    )

    def teardown_after_execution(self, context) -> None:
        # A GPU step frees its models, so the next step (in this process too) has the memory.
        release_gpu_models()

    def placement(self, backend: str = "", base_url: str = "") -> dict:
        """Where a member with these overrides runs, as the ledger records it."""
        return placement(backend or self.backend, self.server, self.device, base_url)

    def generate(
        self,
        model: str,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        progress: Progress | None = None,
        backend: str = "",
        base_url: str = "",
        api_key_env: str = "",
        usage: Usage | None = None,
    ) -> list[Generation]:
        backend = backend or self.backend
        endpoint = (
            chat_endpoint(self.server, base_url, api_key_env) if backend == "openai" else None
        )
        lm = language_model(
            backend,
            model,
            device=self.device,
            dtype=self.dtype,
            cache_dir=str(home.models_dir()),
            gpu_memory_utilization=self.gpu_memory_utilization,
            enable_thinking=self.enable_thinking,
            max_logprobs=self.server.max_logprobs,
            endpoint=endpoint,
        )
        try:
            return lm.generate(
                conversations,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                batch_size=self.batch_size,
                progress=progress,
            )
        finally:
            if usage is not None:
                usage.add(**lm.usage.snapshot())
