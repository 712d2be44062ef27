"""What a checkpoint carries besides its weights, and what its numbers are worth. No Dagster.

- The base model is named portably. peft writes it into `adapter_config.json`
  (`base_model_name_or_path`), and `AutoPeftModelFor*.from_pretrained` and transformers'
  adapter loading pass that string unchanged to `from_pretrained`: a Hub repo id, or a path
  taken from the working directory. An absolute path into a home breaks as soon as the home is
  moved or shared, so `base_fields` writes a base that lives in the same home as the
  checkpoint as a path relative to the home (peft loads it with the home as the working
  directory), a Hub repo id as itself, and any other folder as its absolute path.
  `adapter_base` turns the reference back into a loadable path from anywhere.
- Each checkpoint has a model card (`README.md`): what it was trained on, the base model, the
  rounds, the loss, the settings, the metrics and how to load it.
- Numbers measured on too little data say so (`SMALL_TRAIN_PAIRS`, `SMALL_HELDOUT_PAIRS`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHECKPOINT_INFO = "auf_checkpoint.json"
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CARD = "README.md"
# What TRL's RewardTrainer minimises: -log sigmoid(r_chosen - r_rejected).
REWARD_MODEL_LOSS = "bradley-terry"

# Below these sizes the metrics are noise (docs/training.md, "Small data"): with fewer than 100
# pairs a run is a handful of batches, whose loss moves with the batch; with fewer than 30
# held-out pairs a single pair moves an accuracy by more than 0.03.
SMALL_TRAIN_PAIRS = 100
SMALL_HELDOUT_PAIRS = 30


def train_note(pairs: int) -> str | None:
    """A note when `pairs` training pairs are too few for the training curves to mean anything."""
    if pairs >= SMALL_TRAIN_PAIRS:
        return None
    return (
        f"only {pairs} training pairs (fewer than {SMALL_TRAIN_PAIRS}): too few for the loss and "
        "reward curves to mean anything; they move with the noise of a few batches, and a loss "
        "that ends above where it started (0.693 for DPO) is expected here, not a fault"
    )


def heldout_note(pairs: int, metric: str) -> str | None:
    """A note when `metric` was measured on too few held-out pairs to mean much."""
    if pairs == 0 or pairs >= SMALL_HELDOUT_PAIRS:
        return None
    return (
        f"{metric} is measured on only {pairs} held-out pairs (fewer than {SMALL_HELDOUT_PAIRS}): "
        f"one pair moves it by {1 / pairs:.2f}, so it says little"
    )


# -- the base model's reference -----------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def base_fields(base_dir: str | Path, source: str, home: str | Path, out_dir: str | Path) -> dict:
    """How a checkpoint written to `out_dir` names its base model `base_dir` (configured as
    `source`): relative to `home` when both live in it, the repo id when `source` is a Hub model
    from the local cache, else the absolute path. The fields of its record."""
    base, home = Path(base_dir), Path(home)
    in_home = _inside(base, home) and _inside(Path(out_dir), home)
    if in_home:
        reference = base.resolve().relative_to(home.resolve()).as_posix()
        if Path(source).exists():  # configured as a path into the home: not portable either
            source = reference
    elif source and "/" in source and not Path(source).is_absolute() and not Path(source).exists():
        reference = source  # a repo id: the base was taken from the Hugging Face cache
    else:
        reference = str(base.resolve())
    return {"base_model": reference, "base_source": source, "base_model_in_home": in_home}


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model of an adapter folder as something `from_pretrained` loads from anywhere.

    A reference relative to a home is looked up in the folders above the adapter (the home
    that holds it); anything else (an absolute path, a repo id) is returned as it is.
    """
    folder = Path(adapter_dir)
    reference = json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    path = Path(reference)
    if path.is_absolute():
        return reference
    for root in folder.resolve().parents:
        if (root / path / "config.json").is_file():
            return str(root / path)
    return reference


# -- the model card -----------------------------------------------------------------------------

_TRAINERS = {
    "dpo": "TRL's `DPOTrainer`, loss `sigmoid` (DPO); the reference model is the base with the "
    "adapter disabled",
    "ipo": "TRL's `DPOTrainer`, loss `ipo` (IPO; `beta` is its tau); the reference model is the "
    "base with the adapter disabled",
    "simpo": "TRL's `CPOTrainer`, loss `simpo` (SimPO, reference-free)",
    REWARD_MODEL_LOSS: "TRL's `RewardTrainer`: a Bradley-Terry loss, -log sigmoid(r(chosen) - "
    "r(rejected)), on a one-output sequence-classification head",
}

_SETTINGS_SHOWN = (
    "learning_rate",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "lora_r",
    "lora_alpha",
    "max_length",
    "beta",
    "seed",
)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _load_code(info: Mapping[str, Any]) -> str:
    folder = info.get("checkpoint") or "path/to/this/folder"
    if info["kind"] == "policy":
        return (
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            f'folder = "{folder}"\n'
            "policy = AutoPeftModelForCausalLM.from_pretrained(folder)\n"
            "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        )
    return (
        "import torch\n"
        "from peft import AutoPeftModelForSequenceClassification\n"
        "from transformers import AutoTokenizer\n\n"
        f'folder = "{folder}"\n'
        "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        "# one output: the reward\n"
        "model = AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=1)\n"
        "model.config.pad_token_id = tokenizer.pad_token_id\n"
        "conversation = [\n"
        '    {"role": "user", "content": "What is the capital of France?"},\n'
        '    {"role": "assistant", "content": "Paris."},\n'
        "]\n"
        "# the input is the whole conversation in the chat template, as in training\n"
        'inputs = tokenizer.apply_chat_template(conversation, return_tensors="pt", '
        "return_dict=True)\n"
        "with torch.no_grad():\n"
        "    reward = model.eval()(**inputs).logits[0, 0].item()\n"
    )


def model_card(info: Mapping[str, Any]) -> str:
    """The README.md of a checkpoint, from its `auf_checkpoint.json` record."""
    policy = info["kind"] == "policy"
    loss = info["loss"]
    base = info["base_model"]
    in_home = bool(info.get("base_model_in_home"))
    hub_id = not in_home and "/" in base and not Path(base).is_absolute()
    rounds = list(info.get("rounds") or [])
    front = ["---", "library_name: peft"]
    if hub_id:
        front.append(f"base_model: {base}")
    front += [
        f"pipeline_tag: {'text-generation' if policy else 'text-classification'}",
        "tags:",
        *(f"- {t}" for t in ("auf", "lora", "trl", loss if policy else "reward-model")),
        "---",
    ]
    where = f"`{base}`" + (", relative to the home (the folder with `checkpoints/`)" * in_home)
    source = info.get("base_source")
    lines = [
        *front,
        "",
        f"# {'Policy' if policy else 'Reward model'} (LoRA) for {info.get('round', '?')}",
        "",
        "A LoRA adapter trained on the labelled preference pairs of "
        f"{', '.join(rounds) or 'unknown rounds'}, chosen by active learning (auf): "
        f"{info.get('rows', '?')} pairs, the train split of the released dataset's `trl` config "
        "(ties, judge failures and unlabelled pairs left out; the split is a hash of the prompt "
        "id).",
        "",
        f"- base model: {where}" + (f" (configured as `{source}`)" if source else ""),
        f"- training: {_TRAINERS.get(loss, loss)}",
    ]
    if info.get("data_sha256"):
        lines.append(f"- data: sha256 of the sorted pair ids `{info['data_sha256']}`")
    if info.get("warm_start"):
        lines.append(f"- warm start from the adapter at `{info['warm_start']}`")
    settings = info.get("settings") or {}
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    shown = [k for k in _SETTINGS_SHOWN if k in settings and settings[k] != 0]  # 0: unset
    lines += [f"| `{k}` | {_number(settings[k])} |" for k in shown]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    metrics = info.get("metrics") or {}
    lines += [f"| {k} | {_number(v)} |" for k, v in metrics.items() if v is not None]
    heldout = info.get("heldout")
    if heldout and heldout.get("accuracy") is not None:
        lines.append(
            f"| held-out pairwise accuracy | {heldout['accuracy']:.4f} ({heldout['pairs']} pairs) |"
        )
    elif heldout:
        lines.append(f"| held-out pairwise accuracy | not measured: {heldout['skipped']} |")
    lines += [f"\n> Note: {note}." for note in info.get("notes") or []]
    folder = info.get("checkpoint") or "path/to/this/folder"
    if not Path(folder).is_absolute():
        where_to_run = (
            "Run this from the home folder ($AUF_HOME, `.auf` by default): the folder"
            + (" and the base model's path are" if in_home else " is")
            + " relative to it."
        )
    else:
        where_to_run = "Run this from anywhere."
    lines += [
        "",
        "## How to load",
        "",
        where_to_run,
        "",
        "```python",
        _load_code(info).rstrip("\n"),
        "```",
        "",
        "From anywhere: `auf_assets.core.checkpoints.adapter_base(folder)` gives the base model's "
        "path; load it and then `PeftModel.from_pretrained(base, folder)` (docs/training.md).",
        "",
    ]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_checkpoint_record(folder: str | Path, info: Mapping[str, Any]) -> None:
    """`auf_checkpoint.json` and the model card of a checkpoint folder; the adapter's config
    names the base model as the record does."""
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    if config.get("base_model_name_or_path") != info["base_model"]:
        config["base_model_name_or_path"] = info["base_model"]
        _write_atomic(folder / ADAPTER_CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
    _write_atomic(folder / CHECKPOINT_INFO, json.dumps(info, indent=2, sort_keys=True) + "\n")
    _write_atomic(folder / MODEL_CARD, model_card(info))


def update_checkpoint_record(folder: str | Path, **fields: Any) -> dict:
    """Add `fields` (a later measurement) to a checkpoint's record and card; returns the record."""
    folder = Path(folder)
    info = {**json.loads((folder / CHECKPOINT_INFO).read_text()), **fields}
    write_checkpoint_record(folder, info)
    return info
