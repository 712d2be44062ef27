"""`auf train`: a DPO policy (or a reward model) trained on the rounds so far, and evaluated.

Runs the `training` assets through Dagster on the local instance for one round partition, so the
checkpoint, its curves and its evaluation show in the UI like any other materialisation.
"""

from __future__ import annotations

import argparse
import sys

from auf_assets.cli.common import environment_refusal, number, refuse, round_arg, setting
from auf_assets.core.settings import LOSSES, TrainingSettings

ROUND_HELP = (
    "the round to train for, on the labelled pairs of rounds 1..K: its number (3) or its key "
    "(round-0003); default: the newest round with judgements"
)


def _training(field: str, convert=float):
    """A flag checked by the training settings that own the value (their range)."""
    return setting(lambda v: TrainingSettings(**{field: v}), convert)


def _settings_problems(exc) -> str:
    """One line per invalid setting, named as its command-line option."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        option = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "settings"
        problems.append(f"{option} {error['input']!r}: {message[:1].lower()}{message[1:]}")
    return "; ".join(problems)


def _checked(args: argparse.Namespace):
    """The training settings, round and data, checked before any model loads or run starts.

    Returns (the training resource's overrides, round_id), or prints why not and returns None.
    """
    from pydantic import ValidationError

    from auf_assets.core.training import TrainingError
    from auf_assets.training import training_data
    from resources.model_loading import ModelSourceError
    from resources.store import DuckDBStore
    from resources.training import TrainingResource

    given = {
        "base_model": args.base_model,
        "device": args.device,
        "max_steps": args.max_steps,
        "learning_rate": args.learning_rate,
        "max_length": args.max_length,
        "dpo_beta": args.dpo_beta,
    }
    overrides = {k: v for k, v in given.items() if v not in (None, "")}
    try:
        resource = TrainingResource(**overrides)
        resource.check_sources()
    except ValidationError as exc:
        return _refuse(_settings_problems(exc))
    except ModelSourceError as exc:
        return _refuse(f"--base-model: {exc}")
    store = DuckDBStore()
    available = store.rounds_with_judgements()
    round_id = args.round or (available[-1] if available else None)
    if round_id is None:
        return _refuse(f"no round has judgements yet in {store.root}: run a round first (auf demo)")
    if round_id not in available:
        # Refused before a partition is added: `auf train` never registers a round.
        rounds = ", ".join(available) or "none"
        return _refuse(f"{round_id} has no judgements; rounds with judgements: {rounds}")
    try:
        training_data(store, round_id, resource.test_fraction).train_rows()
    except TrainingError as exc:
        return _refuse(str(exc))
    return overrides, round_id


def _refuse(message: str) -> None:
    print(f"auf train: {message}; nothing was started", file=sys.stderr)
    return None


def _train(args: argparse.Namespace) -> int:
    from auf_assets.cli.common import metadata, prepare_home, run_job
    from auf_assets.cli.console import job_console

    refusal = environment_refusal()
    if refusal:
        return refuse(refusal)
    root = prepare_home()
    checked = _checked(args)
    if checked is None:
        return 2
    training, round_id = checked
    import dagster as dg

    from auf_assets.definitions import defs
    from auf_assets.partitions import rounds_partitions
    from auf_assets.preflight import run_config_problems

    run_config: dict = {}
    if training:
        run_config["resources"] = {"training": {"config": training}}
    if args.reward_model:
        job = defs.resolve_job_def("reward_model_training")
        asset = "reward_model_checkpoint"
    else:
        job = defs.resolve_job_def("policy_training")
        asset = "dpo_policy"
        run_config["ops"] = {
            "dpo_policy": {"config": {"loss": args.loss, "warm_start": args.warm_start}}
        }
    problems = run_config_problems(job, run_config)
    if problems:
        return refuse("bad training settings; nothing was run: " + "; ".join(problems))
    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(rounds_partitions.name, round_id):
        instance.add_dynamic_partitions(rounds_partitions.name, [round_id])
    selection = [dg.AssetKey(asset)] if args.no_eval else None
    # One line per stage on the console; Dagster's records and any trace go to the log file.
    with job_console(root, "train", verbose=args.verbose) as console:
        console.say(f"training {asset} for {round_id} (rounds 1..{round_id})")
        result, status = run_job(
            console, job.name, run_config, partition_key=round_id, asset_selection=selection
        )
        if result is None:
            console.error("Earlier checkpoints are untouched.")
            return status
    meta = metadata(result, asset)
    print(
        f"\n{asset} {round_id}: {meta.get('train_pairs')} pairs, {meta.get('steps')} steps in "
        f"{meta.get('train_seconds')}s, loss {_shown(meta.get('loss_first'))} -> "
        f"{_shown(meta.get('loss_last'))}\n  checkpoint: {root / meta['checkpoint']}"
    )
    if args.reward_model:
        if "heldout_accuracy" in meta:
            print(
                f"  held-out accuracy: {meta['heldout_accuracy']:.3f} "
                f"on {meta['heldout_pairs']} held-out pairs"
            )
        else:
            print(f"  held-out accuracy not measured: {meta['heldout_accuracy_skipped']}")
        _print_note(meta)
        return 0
    _print_note(meta)
    if not args.no_eval:
        ev = metadata(result, "policy_eval")
        for which in ("labels", "oracle"):
            if f"implicit_accuracy_vs_{which}" in ev:
                print(
                    f"  implicit-reward accuracy vs {which}: "
                    f"{ev[f'implicit_accuracy_vs_{which}']:.3f} "
                    f"on {ev[f'pairs_vs_{which}']} held-out pairs"
                )
            elif f"implicit_accuracy_vs_{which}_skipped" in ev:
                skipped = ev[f"implicit_accuracy_vs_{which}_skipped"]
                print(f"  implicit-reward accuracy vs {which} not measured: {skipped}")
        if "win_rate_vs_base" in ev:
            low, high = ev["win_rate_ci95"]
            print(
                f"  win rate over the base model: {ev['win_rate_vs_base']:.3f} "
                f"(95% CI {low:.2f}-{high:.2f}, {ev['comparisons']} comparisons)"
            )
        if "win_rate_skipped" in ev:
            print(f"  win rate skipped: {ev['win_rate_skipped']}")
        _print_note(ev)
    return 0


def _shown(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_note(meta: dict) -> None:
    if meta.get("note"):
        print(f"  note: {meta['note']}")


def add_commands(sub) -> None:
    train = sub.add_parser(
        "train",
        help="train a DPO policy (or --reward-model) on the labelled rounds, then evaluate it",
        description="Train a LoRA policy with TRL on the labelled pairs of rounds 1..K (the "
        "released dataset's train split) and evaluate it on the held-out split; with "
        "--reward-model, a LoRA reward model instead. Settings: docs/training.md.",
    )
    train.add_argument("--round", type=round_arg, default=None, help=ROUND_HELP)
    train.add_argument("--loss", choices=LOSSES, default=TrainingSettings().loss)
    train.add_argument("--reward-model", action="store_true", help="train the reward model")
    train.add_argument(
        "--warm-start", action="store_true", help="start from the previous round's adapter"
    )
    train.add_argument("--no-eval", action="store_true", help="train only (no policy_eval)")
    train.add_argument(
        "--verbose", action="store_true", help="print every Dagster log line here too"
    )
    train.add_argument("--base-model", default="", help="default: the packaged SmolLM2-135M")
    train.add_argument("--device", default="", help="cpu, cuda, ... (default: auto)")
    train.add_argument(
        "--max-steps",
        type=number(integer=True, ge=1),
        default=None,
        help="training steps (default: the preset's epochs decide)",
    )
    train.add_argument(
        "--learning-rate", type=_training("learning_rate"), default=None, help="default: preset's"
    )
    train.add_argument(
        "--max-length",
        type=_training("max_length", int),
        default=None,
        help="tokens per prompt + response (default: the preset's)",
    )
    train.add_argument(
        "--dpo-beta",
        type=_training("dpo_beta"),
        default=None,
        help=f"DPO beta, IPO tau (default {TrainingSettings().dpo_beta:g})",
    )
    train.set_defaults(func=_train)
