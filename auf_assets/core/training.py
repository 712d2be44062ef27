"""Training on the active dataset with TRL and PEFT. No Dagster.

- `train_policy`: a LoRA adapter on a causal LM with TRL's `DPOTrainer` (losses `dpo` = sigmoid,
  `ipo`) or its `CPOTrainer` (`simpo`). The reference model of DPO/IPO is the base with the
  adapter disabled (TRL does this when it gets a `peft_config`): no second copy of the weights.
- `train_reward_model`: a LoRA sequence-classification reward model with TRL's `RewardTrainer`.
- The evaluations of what was trained are in :mod:`auf_assets.core.training_evaluation`.

Rows are TRL's explicit-prompt conversational form (the `trl` config of a released dataset):
`prompt` = the user turn(s), `chosen` / `rejected` = the assistant turn. A checkpoint is written to
a temporary folder and renamed into place only when complete, so a failed run never touches
the checkpoints already there.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .chat_lm import load_tokenizer, lora_config
from .checkpoints import REWARD_MODEL_LOSS, train_note, write_checkpoint_record
from .devices import choose_device, wants_gpu
from .presets import TRAINING_PRESETS
from .settings import TrainingSettings

# Settings that only a policy's loss reads (a reward model's record leaves them out).
POLICY_ONLY_SETTINGS = ("loss", "dpo_beta", "simpo_gamma")
Log = Callable[[str], None]


class TrainingError(ValueError):
    """Training cannot start or did not finish; the message says why. Nothing was replaced."""


def training_settings(kind: str, device: str = "auto", **overrides: Any) -> TrainingSettings:
    """The preset for `kind` (policy, reward_model) on `device`'s kind (GPU or CPU), with the
    `overrides` that are not None applied (and checked)."""
    where = "gpu" if wants_gpu(device) else "cpu"
    base = TRAINING_PRESETS[where][kind]
    return replace(base, device=device, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class TrainReport:
    """What a run did: per-step curves and totals (for metadata and plots)."""

    steps: int
    rows: int
    seconds: float
    tokens: int
    peak_rss_mb: float
    peak_gpu_mb: float | None
    curves: dict[str, list[float]] = field(default_factory=dict)
    dropped_too_long: int = 0
    notes: list[str] = field(default_factory=list)  # what the numbers are (not) worth

    def last(self, name: str) -> float | None:
        values = self.curves.get(name) or []
        return values[-1] if values else None

    def first(self, name: str) -> float | None:
        values = self.curves.get(name) or []
        return values[0] if values else None


# -- input checks -----------------------------------------------------------------------------


def check_rows(rows: Sequence[dict]) -> list[dict]:
    """Pairs worth training on; raises on an empty or one-class dataset."""
    if not rows:
        raise TrainingError("no preference pairs to train on (the dataset is empty)")
    usable = [r for r in rows if _text(r["chosen"]) != _text(r["rejected"])]
    if not usable:
        raise TrainingError(
            f"all {len(rows)} pairs have the same response as chosen and rejected: there is "
            "nothing to learn from (a one-class dataset)"
        )
    return usable


def fit_rows(tokenizer, rows: Sequence[dict], max_length: int, kind: str) -> list[dict]:
    """The rows TRL will train on: it drops a pair whose prompt alone fills `max_length`
    (policies) or whose whole conversation is longer (reward models). Raises when none is left.
    """

    def length(turns, generation_prompt=False) -> int:
        text = tokenizer.apply_chat_template(
            list(turns), add_generation_prompt=generation_prompt, tokenize=False
        )
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    if kind == "policy":
        kept = [r for r in rows if length(r["prompt"], True) < max_length]
    else:
        kept = [
            r
            for r in rows
            if max(length(list(r["prompt"]) + list(r[side])) for side in ("chosen", "rejected"))
            <= max_length
        ]
    if not kept:
        raise TrainingError(
            f"every one of the {len(rows)} pairs is longer than max_length={max_length} tokens "
            f"({'the prompt alone' if kind == 'policy' else 'prompt + response'}): raise max_length"
        )
    return kept


def _text(turns: Sequence[dict]) -> str:
    return "\n".join(t["content"] for t in turns)


def check_base(base_dir: str | Path, kind: str) -> None:
    """The base model must be a causal LM whose tokenizer has a chat template."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(base_dir)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read the base model at {base_dir}: {exc}") from None
    archs = config.architectures or []
    causal = (
        any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        if archs
        else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if not causal:
        raise TrainingError(
            f"the base model at {base_dir} is not a causal language model "
            f"({', '.join(archs) or config.model_type}): {kind} training needs one"
        )
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError(
            f"the tokenizer at {base_dir} has no chat template: the pairs are conversations and "
            "are formatted with it; use an instruct/chat model or add a template to it"
        )


def _device_args(settings: TrainingSettings, device) -> dict[str, Any]:
    import torch

    gpu = device.type == "cuda"
    bf16 = settings.bf16 if settings.bf16 is not None else gpu and torch.cuda.is_bf16_supported()
    checkpointing = settings.gradient_checkpointing
    return {
        "use_cpu": not gpu,
        "bf16": bool(bf16),
        "gradient_checkpointing": bool(gpu if checkpointing is None else checkpointing),
    }


def _common_args(settings: TrainingSettings, output_dir: str, device) -> dict[str, Any]:
    return {
        "output_dir": output_dir,
        "learning_rate": settings.learning_rate,
        "num_train_epochs": settings.epochs,
        "max_steps": settings.max_steps if settings.max_steps > 0 else -1,
        "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.grad_accum,
        "max_length": settings.max_length,
        "seed": settings.seed,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **_device_args(settings, device),
    }


def _train_on(args, device):
    """`args` pinned to `device`, the GPU this process claimed (`choose_device`). transformers
    trains a single process on cuda:0 and over every visible GPU at once (TRL's trainers refuse
    that), whatever other processes claimed: its device set-up runs first, then the claimed GPU
    replaces what it chose. The CPU needs nothing."""
    if device.type != "cuda":
        return args
    import torch

    args._setup_devices  # noqa: B018 - transformers' own set-up (accelerate's state) first
    torch.cuda.set_device(device)
    args.__dict__["_setup_devices"] = device  # the cached `args.device`
    args._n_gpu = 1
    return args


def _quiet(trainer) -> None:
    """transformers prints every log line to stdout when tqdm is off; we log our own progress."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


class _Progress:
    """A transformers callback that logs every few steps (long work shows progress)."""

    def __new__(cls, log: Log, every_s: float = 15.0):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            last = 0.0

            def on_log(self, args, state, control, logs=None, **kwargs):
                now = time.monotonic()
                if state.global_step == state.max_steps or now - self.last >= every_s:
                    self.last = now
                    loss = (logs or {}).get("loss")
                    shown = f", loss {loss:.4f}" if loss is not None else ""
                    log(f"step {state.global_step}/{state.max_steps}{shown}")

        return Callback()


def _run(trainer, rows: int, log: Log) -> TrainReport:
    import torch

    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        trainer.train()
    except torch.OutOfMemoryError as exc:
        raise TrainingError(
            f"out of memory while training ({str(exc).splitlines()[0]}): lower batch_size or "
            "max_length, or raise grad_accum; no checkpoint was written"
        ) from None
    except MemoryError:
        raise TrainingError(
            "out of memory while training: lower batch_size or max_length; no checkpoint was "
            "written"
        ) from None
    seconds = time.perf_counter() - started
    curves: dict[str, list[float]] = {}
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                curves.setdefault(key, []).append(float(value))
    tokens = int((curves.get("num_tokens") or [0])[-1])
    return TrainReport(
        steps=int(trainer.state.global_step),
        rows=rows,
        seconds=seconds,
        tokens=tokens,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        curves=curves,
    )


def _save(trainer, tokenizer, out_dir: Path, info: dict) -> None:
    """Adapter + tokenizer + our own record and model card, complete or not at all."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        trainer.model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_checkpoint_record(staging, info)  # replaces peft's blank README template
        staging.chmod(0o755)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train_policy(
    base_dir: str | Path,
    rows: Sequence[dict],
    settings: TrainingSettings,
    out_dir: str | Path,
    *,
    init_adapter: str | Path | None = None,
    info: dict | None = None,
    log: Log = print,
) -> TrainReport:
    """Train a LoRA policy on preference `rows`; write the adapter to `out_dir`."""
    import datasets

    device = choose_device(settings.device)  # a wrong name fails before any work
    check_base(base_dir, "policy")
    given = check_rows(rows)
    tokenizer = load_tokenizer(base_dir)
    rows = fit_rows(tokenizer, given, settings.max_length, "policy")
    lora = _lora(settings, "CAUSAL_LM")
    dataset = datasets.Dataset.from_list([_trl_row(r) for r in rows])
    with tempfile.TemporaryDirectory() as scratch:
        common = _common_args(settings, scratch, device)
        if settings.loss == "simpo":
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            args = _train_on(
                CPOConfig(
                    loss_type="simpo",
                    cpo_alpha=0.0,
                    beta=settings.dpo_beta,
                    simpo_gamma=settings.simpo_gamma,
                    **common,
                ),
                device,
            )
            trainer = CPOTrainer(
                model=str(base_dir),
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=lora,
            )
        else:
            from trl import DPOConfig, DPOTrainer

            loss_type = ["sigmoid"] if settings.loss == "dpo" else ["ipo"]
            config = DPOConfig(loss_type=loss_type, beta=settings.dpo_beta, **common)
            args = _train_on(config, device)
            trainer = DPOTrainer(
                model=str(base_dir),
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=lora,
            )
        if init_adapter is not None:
            _load_adapter_weights(trainer.model, Path(init_adapter))
            log(f"warm start from {init_adapter}")
        record = {"kind": "policy", "warm_start": str(init_adapter) if init_adapter else None}
        return _train_and_save(
            trainer,
            tokenizer,
            base_dir,
            settings,
            given,
            rows,
            out_dir,
            {**record, **(info or {})},
            log,
        )


def _train_and_save(trainer, tokenizer, base_dir, settings, given, rows, out_dir, record, log):
    """Run a prepared trainer with progress logging and write its checkpoint."""
    _quiet(trainer)
    trainer.add_callback(_Progress(log))
    policy = record["kind"] == "policy"
    what = settings.loss if policy else "reward-model"
    log(f"{what} training on {len(rows)} pairs ({len(given) - len(rows)} too long)")
    report = _run(trainer, len(rows), log)
    report.dropped_too_long = len(given) - len(rows)
    report.notes = [n for n in [train_note(len(rows))] if n]
    for note in report.notes:
        log(f"note: {note}")
    shown = ("rewards/accuracies", "rewards/margins") if policy else ("accuracy", "margin")
    settings_record = asdict(settings)
    if not policy:
        for name in POLICY_ONLY_SETTINGS:
            settings_record.pop(name)
    record = {
        "base_model": str(base_dir),
        "loss": settings.loss if policy else REWARD_MODEL_LOSS,
        "settings": settings_record,
        "rows": len(rows),
        "metrics": {
            "steps": report.steps,
            "loss_first": report.first("loss"),
            "loss_last": report.last("loss"),
            "reward_accuracy_last": report.last(shown[0]),
            "reward_margin_last": report.last(shown[1]),
        },
        "notes": report.notes,
        **record,
    }
    _save(trainer, tokenizer, Path(out_dir), record)
    return report


def _lora(settings: TrainingSettings, task_type: str):
    return lora_config(settings.lora_r, settings.lora_alpha, task_type, settings.lora_dropout)


def _trl_row(row: dict) -> dict:
    return {
        "prompt": list(row["prompt"]),
        "chosen": list(row["chosen"]),
        "rejected": list(row["rejected"]),
    }


def _load_adapter_weights(model, folder: Path) -> None:
    """Start from another adapter's weights; the reference stays the base (adapter disabled)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        raise TrainingError(f"warm start: no adapter_model.safetensors in {folder}")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    if getattr(result, "unexpected_keys", None):
        raise TrainingError(
            f"warm start: the adapter in {folder} does not fit this model/LoRA setting "
            f"({len(result.unexpected_keys)} unexpected weights)"
        )


def train_reward_model(
    base_dir: str | Path,
    rows: Sequence[dict],
    settings: TrainingSettings,
    out_dir: str | Path,
    *,
    info: dict | None = None,
    log: Log = print,
) -> TrainReport:
    """Train a LoRA sequence-classification reward model on `rows`; write it to `out_dir`."""
    import datasets
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    device = choose_device(settings.device)  # a wrong name fails before any work
    check_base(base_dir, "reward model")
    given = check_rows(rows)
    tokenizer = load_tokenizer(base_dir)
    tokenizer.padding_side = "right"
    rows = fit_rows(tokenizer, given, settings.max_length, "reward_model")
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    lora = _lora(settings, "SEQ_CLS")
    dataset = datasets.Dataset.from_list([_trl_row(r) for r in rows])
    with tempfile.TemporaryDirectory() as scratch:
        args = _train_on(RewardConfig(**_common_args(settings, scratch, device)), device)
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
        )
        return _train_and_save(
            trainer,
            tokenizer,
            base_dir,
            settings,
            given,
            rows,
            out_dir,
            {"kind": "reward_model", **(info or {})},
            log,
        )
