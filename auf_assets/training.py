"""The `training` group: what the active data is for, trained and measured, per round.

- `dpo_policy` (round k): a LoRA adapter trained with TRL (DPO, IPO or SimPO) on the labelled
  pairs of rounds 1..k, the train split of the released dataset (same rows, same split).
- `reward_model_checkpoint` (round k): a LoRA sequence-classification reward model on the same
  pairs, with its held-out pairwise accuracy.
- `policy_eval` (round k): the policy's implicit-reward accuracy on the held-out split (against
  the labels, and against the oracle when the prompts come from a simulated-oracle pool), and
  the win rate of its answers over the base model's on held-out prompts, judged by the
  configured judge; with a plot of every metric across rounds.

None of these is part of a round's job (a round must stay fast): they run from the UI, from
`auf train`, or after each round when `AUF_TRAIN_AFTER_ROUND=1`.
"""

import dataclasses
import hashlib
import time
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from auf_assets.core.checkpoints import (
    REWARD_MODEL_LOSS,
    heldout_note,
    update_checkpoint_record,
)
from auf_assets.core.release import in_test_split, preference_rows, trl_rows
from auf_assets.core.response_pool import PoolFileError, oracle_scores
from auf_assets.core.settings import LOSSES, TrainingSettings
from auf_assets.core.training import TrainingError, train_policy, train_reward_model
from auf_assets.core.training_evaluation import (
    implicit_reward_accuracy,
    load_policy,
    load_reward_model,
    reward_model_accuracy,
    win_rate,
)
from auf_assets.label_sources import get_label_source
from auf_assets.partitions import round_index, rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.reporting import figure_png, png_markdown, progress_logger
from auf_assets.round import judgements
from resources.engine import GenerationEngine
from resources.label_source import LabelSource
from resources.store import DuckDBStore, utcnow
from resources.training import TrainingResource

GROUP = "training"
CODE_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The labelled pairs of rounds 1..k in TRL's form, split as the released dataset is."""

    round_id: str
    rounds: list[str]
    train: pl.DataFrame
    test: pl.DataFrame
    test_fraction: float

    def train_rows(self) -> list[dict]:
        """The train split's rows; raises when it is empty (every prompt was held out)."""
        if self.train.height == 0:
            raise TrainingError(
                f"no labelled pair of {_span(self.rounds)} is in the train split: all "
                f"{self.test.height} fell into the test split (test_fraction "
                f"{self.test_fraction}, a hash of the prompt id); label more prompts or lower "
                "test_fraction"
            )
        return self.train.select("prompt", "chosen", "rejected").to_dicts()

    def test_rows(self) -> list[dict]:
        return self.test.select("prompt", "chosen", "rejected").to_dicts()

    def no_heldout_reason(self) -> str:
        """Why the test split is empty (for metadata and the console)."""
        if self.test_fraction <= 0:
            return "no held-out pairs: test_fraction is 0, so every labelled pair trains"
        prompts = self.train["prompt_id"].n_unique()
        return (
            f"no held-out pairs: none of the {prompts} labelled prompts of {_span(self.rounds)} "
            f"fell into the test split (test_fraction {self.test_fraction}: a hash of each prompt "
            "id puts about that share there); label more prompts, or raise test_fraction (with "
            "preference_dataset's)"
        )


def _span(rounds: list[str]) -> str:
    return rounds[0] if len(rounds) == 1 else f"rounds {rounds[0]}..{rounds[-1]}"


def training_data(store: DuckDBStore, round_id: str, test_fraction: float) -> TrainingData:
    """The labelled pairs of rounds 1..round_id: the same rows and split as
    `preference_dataset`. Raises TrainingError, before any model loads, for a round without
    judgements or rounds without a single labelled pair."""
    try:
        upto = round_index(round_id)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    available = store.rounds_with_judgements()
    if round_id not in available:
        raise TrainingError(
            f"{round_id} has no judgements: run the round (or its labels) first; rounds with "
            f"judgements: {', '.join(available) or 'none'}"
        )
    rounds = [r for r in available if round_index(r) <= upto]
    pairs = store.release_pairs(rounds)
    prefs, left_out = preference_rows(pairs, store.release_judge_scores(rounds))
    if prefs.height == 0:
        counts = ", ".join(f"{n} {kind}" for kind, n in left_out.items() if n) or "none"
        raise TrainingError(
            f"{_span(rounds)} has no labelled pair ({pairs.height} pairs: {counts}); nothing "
            "to train on: label pairs (auf labels) or run more rounds"
        )
    frame = trl_rows(prefs)
    test = in_test_split(frame["prompt_id"], test_fraction)
    return TrainingData(round_id, rounds, frame.filter(~test), frame.filter(test), test_fraction)


def _training_data(store: DuckDBStore, round_id: str, test_fraction: float) -> TrainingData:
    try:
        return training_data(store, round_id, test_fraction)
    except TrainingError as exc:
        raise dg.Failure(str(exc)) from None


def _data_sha(frame: pl.DataFrame) -> str:
    return hashlib.sha256("\n".join(sorted(frame["pair_id"])).encode()).hexdigest()


def _curve_plot(curves: dict[str, list[float]], names: list[str]) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [n for n in names if curves.get(n)]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 2.6), dpi=100)
    for ax, name in zip(np.atleast_1d(axes), shown, strict=True):
        ax.plot(range(1, len(curves[name]) + 1), curves[name])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    return figure_png(fig)


def _train_metadata(report, rows: int, data: TrainingData, curves: list[str]) -> dict:
    meta = {
        "rounds": dg.MetadataValue.json(data.rounds),
        "train_pairs": rows,
        "data_sha256": _data_sha(data.train),
        "pairs_too_long_dropped": report.dropped_too_long,
        "steps": report.steps,
        "tokens": report.tokens,
        "train_seconds": round(report.seconds, 2),
        "peak_rss_mb": round(report.peak_rss_mb, 1),
        "loss_first": report.first("loss"),
        "loss_last": report.last("loss"),
    }
    if report.peak_gpu_mb is not None:
        meta["peak_gpu_mb"] = round(report.peak_gpu_mb, 1)
    if report.notes:
        meta["note"] = "; ".join(report.notes)
    plot = _curve_plot(report.curves, curves)
    if plot is not None:
        meta["curves"] = png_markdown(plot, "training curves")
    return meta


def _register(store, kind, round_id, training, path, base, loss, rows, data, report):
    store.record_checkpoint(
        {
            "kind": kind,
            "round_id": round_id,
            "path": store.relative(path),
            "base_model": base,
            "loss": loss,
            "rows": rows,
            "rounds": ",".join(data.rounds),
            "data_sha256": _data_sha(data.train),
            "settings": training.model_dump_json(exclude={"checkpoint_dir"}),
            "steps": report.steps,
            "train_seconds": report.seconds,
            "code_version": CODE_VERSION,
            "created_at": utcnow(),
        }
    )


def _record(store, training, kind: str, out, data: TrainingData, **extra) -> dict:
    """What the checkpoint's own record says beyond the training run: paths relative to the
    home, so a moved or shared home keeps working."""
    return {
        "round": data.round_id,
        "rounds": data.rounds,
        "data_sha256": _data_sha(data.train),
        "checkpoint": store.relative(out),
        **training.base_fields(kind, out),
        **extra,
    }


class DpoPolicyConfig(dg.Config):
    loss: Literal[LOSSES] = Field(  # type: ignore[valid-type]
        default=TrainingSettings().loss,
        description="dpo (sigmoid), ipo, or simpo (TRL's CPOTrainer)",
    )
    warm_start: bool = Field(
        default=False, description="start from the previous round's adapter (if there is one)"
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="DPO steps (None: the training settings'); the policy loop's per-round step",
    )
    seed: int = 0


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[judgements],
    group_name=GROUP,
    kinds={"pytorch", "peft", "safetensors"},
    code_version=CODE_VERSION,
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="A LoRA policy trained with TRL (DPO/IPO/SimPO) on the labelled pairs of rounds "
    "1..k (the released dataset's train split); the reference is the base, adapter disabled.",
)
def dpo_policy(
    context: dg.AssetExecutionContext,
    config: DpoPolicyConfig,
    training: TrainingResource,
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    data = _training_data(store, round_id, training.test_fraction)
    init = None
    if config.warm_start:
        before = [r for r in data.rounds if round_index(r) < round_index(round_id)]
        previous = store.checkpoint("dpo_policy", before[-1]) if before else None
        if previous is not None:
            init = store.resolve(previous["path"])
        else:
            context.log.info("warm start asked, but no earlier round has a policy: from the base")
    out = training.checkpoint_root() / "dpo_policy" / round_id
    try:
        rows = data.train_rows()
        base = training.base_dir("policy")
        settings = training.settings("policy", loss=config.loss, seed=config.seed)
        if config.max_steps is not None:
            settings = dataclasses.replace(settings, max_steps=config.max_steps)
        warm = {"warm_start": store.relative(init)} if init else {}
        report = train_policy(
            base,
            rows,
            settings,
            out,
            init_adapter=init,
            info=_record(store, training, "policy", out, data, **warm),
            log=context.log.info,
        )
    except (TrainingError, ValueError) as exc:
        raise dg.Failure(f"{round_id}: {exc}") from None
    _register(
        store,
        "dpo_policy",
        round_id,
        training,
        out,
        training.base_model,
        config.loss,
        len(rows),
        data,
        report,
    )
    curves = ["loss", "rewards/accuracies", "rewards/margins"]
    meta = _train_metadata(report, len(rows), data, curves)
    meta.update(
        {
            "loss_type": config.loss,
            "base_model": training.base_model,
            "warm_start_from": store.relative(init) if init else "base",
            "reward_accuracy_last": report.last("rewards/accuracies"),
            "reward_margin_last": report.last("rewards/margins"),
            "checkpoint": dg.MetadataValue.path(store.relative(out)),
        }
    )
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[judgements],
    group_name=GROUP,
    kinds={"pytorch", "peft", "safetensors"},
    code_version=CODE_VERSION,
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="A LoRA sequence-classification reward model trained with TRL's RewardTrainer "
    "on the labelled pairs of rounds 1..k, with its held-out pairwise accuracy.",
)
def reward_model_checkpoint(
    context: dg.AssetExecutionContext, training: TrainingResource, store: DuckDBStore
) -> dg.MaterializeResult:
    round_id = context.partition_key
    data = _training_data(store, round_id, training.test_fraction)
    test_rows = data.test_rows()
    out = training.checkpoint_root() / "reward_model" / round_id
    base_source = training.reward_base_model or training.base_model
    try:
        rows = data.train_rows()
        base = training.base_dir("reward_model")
        report = train_reward_model(
            base,
            rows,
            training.settings("reward_model"),
            out,
            info=_record(store, training, "reward_model", out, data),
            log=context.log.info,
        )
        held_out = None
        if test_rows:
            held_out = reward_model_accuracy(
                *reversed(load_reward_model(base, out, device=training.device)), test_rows
            )
    except (TrainingError, ValueError) as exc:
        raise dg.Failure(f"{round_id}: {exc}") from None
    _register(
        store,
        "reward_model",
        round_id,
        training,
        out,
        base_source,
        REWARD_MODEL_LOSS,
        len(rows),
        data,
        report,
    )
    meta = _train_metadata(report, len(rows), data, ["loss", "accuracy", "margin"])
    meta.update(
        {"base_model": base_source, "checkpoint": dg.MetadataValue.path(store.relative(out))}
    )
    notes, measured = list(report.notes), {}
    if held_out is None:
        skipped = data.no_heldout_reason()
        context.log.warning(f"held-out accuracy not measured: {skipped}")
        meta["heldout_accuracy_skipped"] = skipped
        heldout = {"skipped": skipped}
    else:
        meta["heldout_accuracy"] = held_out["accuracy"]
        meta["heldout_pairs"] = held_out["pairs"]
        heldout = {"accuracy": held_out["accuracy"], "pairs": held_out["pairs"]}
        measured = {"heldout_accuracy": held_out}
        if note := heldout_note(held_out["pairs"], "held-out accuracy"):
            context.log.info(f"note: {note}")
            notes.append(note)
    if notes:
        meta["note"] = "; ".join(notes)
    update_checkpoint_record(out, heldout=heldout, notes=notes)
    _store_evals(store, round_id, "reward_model", measured)  # nothing measured: none stored
    return dg.MaterializeResult(metadata=meta)


def _store_evals(store: DuckDBStore, round_id: str, kind: str, results: dict[str, dict]) -> None:
    rows = []
    for name, result in results.items():
        value = result["accuracy"] if "accuracy" in result else result["win_rate"]
        rows.append(
            {
                "round_id": round_id,
                "kind": kind,
                "metric": name,
                "value": None if np.isnan(value) else float(value),
                "n": int(result.get("pairs", result.get("comparisons", 0))),
                "created_at": utcnow(),
            }
        )
    store.record_evals(
        round_id,
        kind,
        pl.DataFrame(
            rows,
            schema={
                "round_id": pl.String,
                "kind": pl.String,
                "metric": pl.String,
                "value": pl.Float64,
                "n": pl.Int32,
                "created_at": pl.Datetime("us"),
            },
        ),
    )


class PolicyEvalConfig(dg.Config):
    win_rate_prompts: int = Field(
        default=16, ge=0, description="held-out prompts for the win rate (0: skip it)"
    )
    max_new_tokens: int = Field(default=96, ge=1)
    oracle_pairs: int = Field(
        default=200, ge=0, description="most held-out pool pairs with a clear oracle gap to score"
    )
    oracle_gap: float = Field(default=0.1, ge=0, description="a clear oracle gap")


def _oracle_rows(store, labelling, test_prompts: list[str], config: PolicyEvalConfig) -> list[dict]:
    """Held-out prompts' response pairs with a clear oracle gap (simulated-oracle pools only)."""
    responses = store.responses_to_prompts(test_prompts)
    if responses.height == 0:
        return []
    scores = oracle_scores(labelling.oracle_pool, responses["completion_id"].to_list())
    rows = []
    for (_,), group in responses.group_by(["prompt_id"], maintain_order=True):
        items = [r for r in group.iter_rows(named=True) if r["completion_id"] in scores]
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                gap = scores[a["completion_id"]] - scores[b["completion_id"]]
                if abs(gap) >= config.oracle_gap:
                    win, lose = (a, b) if gap > 0 else (b, a)
                    rows.append(
                        {
                            "prompt": [{"role": "user", "content": a["prompt"]}],
                            "chosen": [{"role": "assistant", "content": win["response"]}],
                            "rejected": [{"role": "assistant", "content": lose["response"]}],
                        }
                    )
    rng = np.random.default_rng(0)
    keep = sorted(rng.permutation(len(rows))[: config.oracle_pairs])
    return [rows[i] for i in keep]


def _eval_plot(evals: pl.DataFrame) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = evals.filter(pl.col("value").is_not_null())
    if evals.height == 0:
        return None
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    for (kind, metric), group in evals.group_by(["kind", "metric"], maintain_order=True):
        ax.plot(group["round_id"], group["value"], marker="o", label=f"{kind}: {metric}")
    ax.axhline(0.5, color="#999", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend(fontsize=7)
    return figure_png(fig)


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[dpo_policy],
    group_name=GROUP,
    kinds={"pytorch", "peft"},
    code_version=CODE_VERSION,
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="The round's DPO policy measured: implicit-reward accuracy on held-out pairs "
    "(against the labels, and the oracle for simulated-oracle pools) and the win rate of its "
    "answers over the base model's, judged by the configured judge.",
)
def policy_eval(
    context: dg.AssetExecutionContext,
    config: PolicyEvalConfig,
    training: TrainingResource,
    engine: GenerationEngine,
    label_source: dg.ResourceParam[LabelSource],
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    labelling = label_source.labelling
    try:
        score_answers = get_label_source(label_source.name).score_answers
    except ValueError as exc:
        raise dg.Failure(f"policy_eval: {exc}") from exc
    checkpoint = store.checkpoint("dpo_policy", round_id)
    if checkpoint is None:
        raise dg.Failure(f"{round_id} has no dpo_policy checkpoint: materialise dpo_policy first")
    adapter = store.resolve(checkpoint["path"])
    data = _training_data(store, round_id, training.test_fraction)
    test_rows = data.test_rows()
    started = time.perf_counter()
    test_prompts = data.test["prompt_id"].unique().to_list()
    scored = {"vs_labels": test_rows}
    if labelling.oracle_pool and test_prompts:
        try:
            scored["vs_oracle"] = _oracle_rows(store, labelling, test_prompts, config)
        except PoolFileError as exc:
            raise dg.Failure(str(exc)) from None
    metadata: dict = {}
    skipped = {
        "vs_labels": data.no_heldout_reason(),
        "vs_oracle": f"no held-out pool pair with an oracle gap of at least {config.oracle_gap}",
    }
    for name in [k for k, rows in scored.items() if not rows]:
        metadata[f"implicit_accuracy_{name}_skipped"] = skipped[name]
        context.log.warning(f"implicit-reward accuracy {name} not measured: {skipped[name]}")
    results = {}
    if any(scored.values()):
        tokenizer, model = load_policy(training.base_dir("policy"), adapter, device=training.device)
        results = {
            name: implicit_reward_accuracy(model, tokenizer, rows, training.policy_dpo_beta)
            for name, rows in scored.items()
            if rows
        }
        del model
    metadata |= {f"implicit_accuracy_{k}": r["accuracy"] for k, r in results.items()} | {
        f"pairs_{k}": r["pairs"] for k, r in results.items()
    }
    notes = [heldout_note(r["pairs"], f"implicit-reward accuracy {k}") for k, r in results.items()]

    held_out = store.held_out_prompts(test_prompts).head(config.win_rate_prompts)
    if held_out.height and score_answers is not None:
        convs = [[{"role": "user", "content": p}] for p in held_out["prompt"]]
        answers = {}
        for name, source in (("policy", str(adapter)), ("base", training.base_model)):
            context.log.info(f"generating {len(convs)} held-out answers with the {name}")
            outs = engine.generate(
                source,
                convs,
                max_new_tokens=config.max_new_tokens,
                temperature=0.0,
                top_p=1.0,
                seed=0,
                progress=progress_logger(context, name),
            )
            answers[name] = [o.text for o in outs]
        prompts = held_out["prompt"].to_list()
        scores = {
            name: score_answers(label_source, prompts, texts, progress_logger(context, "judge"))
            for name, texts in answers.items()
        }
        wr = win_rate(scores["policy"], scores["base"])
        metadata["judge_failures"] = wr["failed"]
        if wr["comparisons"] == 0:
            metadata["win_rate_skipped"] = f"the judge failed on all {wr['failed']} comparisons"
        else:
            results["win_rate_vs_base"] = wr
            metadata.update(
                {
                    "win_rate_vs_base": wr["win_rate"],
                    "win_rate_ci95": dg.MetadataValue.json([wr["ci_low"], wr["ci_high"]]),
                    "comparisons": wr["comparisons"],
                    "wins_ties_losses": dg.MetadataValue.json(
                        [wr["wins"], wr["ties"], wr["losses"]]
                    ),
                }
            )
    else:
        why = (
            "no held-out prompts"
            if held_out.height == 0
            else (f"the label source {labelling.source!r} cannot judge new answers")
        )
        metadata["win_rate_skipped"] = why
    if notes := [n for n in notes if n]:
        context.log.info(f"note: {'; '.join(notes)}")
        metadata["note"] = "; ".join(notes)
    _store_evals(store, round_id, "dpo_policy", results)
    plot = _eval_plot(store.evals())
    if plot is not None:
        metadata["across_rounds"] = png_markdown(plot, "evaluation across rounds")
    metadata["eval_seconds"] = round(time.perf_counter() - started, 2)
    return dg.MaterializeResult(metadata=metadata)


TRAINING_ASSETS = [dpo_policy, reward_model_checkpoint, policy_eval]

policy_training_job = dg.define_asset_job(
    "policy_training",
    selection=dg.AssetSelection.assets(dpo_policy, policy_eval),
    description="Train the round's DPO policy on rounds 1..k and evaluate it.",
)
reward_model_training_job = dg.define_asset_job(
    "reward_model_training",
    selection=dg.AssetSelection.assets(reward_model_checkpoint),
    description="Train the round's LoRA reward model on rounds 1..k and measure it held out.",
)
