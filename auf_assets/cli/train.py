"""`auf train`: a DPO policy (or a reward model) trained on the rounds so far, and evaluated.

Runs the `training` assets through Dagster on the local instance for one round partition, so the
checkpoint, its curves and its evaluation show in the UI like any other materialisation.
"""

from __future__ import annotations

import argparse
import sys


def _newest_round() -> str | None:
    from resources.store import DuckDBStore

    rounds = DuckDBStore().rounds_with_judgements()
    return rounds[-1] if rounds else None


def _train(args: argparse.Namespace) -> int:
    from auf_assets.cli.common import failure_message, metadata, prepare_home, ui_run_tags

    prepare_home()
    import dagster as dg

    from auf_assets.definitions import defs
    from auf_assets.partitions import rounds_partitions

    round_id = args.round or _newest_round()
    if round_id is None:
        print("no round has judgements yet: run a round first (auf demo)", file=sys.stderr)
        return 1
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(rounds_partitions.name, [round_id])
    training = {
        key: value
        for key, value in {
            "base_model": args.base_model,
            "device": args.device,
            "max_steps": args.max_steps,
            "learning_rate": args.learning_rate,
            "max_length": args.max_length,
        }.items()
        if value
    }
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
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
    selection = [dg.AssetKey(asset)] if args.no_eval else None
    print(f"training {asset} for {round_id} (rounds 1..{round_id})")
    result = job.execute_in_process(
        instance=instance,
        partition_key=round_id,
        run_config=run_config,
        asset_selection=selection,
        raise_on_error=False,
        tags=ui_run_tags(),
    )
    if not result.success:
        print(f"\n{job.name} failed: {failure_message(result)}", file=sys.stderr)
        print("Earlier checkpoints are untouched.", file=sys.stderr)
        return 1
    meta = metadata(result, asset)
    print(
        f"\n{asset} {round_id}: {meta.get('train_pairs')} pairs, {meta.get('steps')} steps in "
        f"{meta.get('train_seconds')}s, loss {meta.get('loss_first'):.4f} -> "
        f"{meta.get('loss_last'):.4f}\n  checkpoint: {meta.get('checkpoint')}"
    )
    if args.reward_model:
        print(f"  held-out accuracy: {meta.get('heldout_accuracy')}")
    elif not args.no_eval:
        ev = metadata(result, "policy_eval")
        for which in ("labels", "oracle"):
            if f"implicit_accuracy_vs_{which}" in ev:
                print(
                    f"  implicit-reward accuracy vs {which}: "
                    f"{ev[f'implicit_accuracy_vs_{which}']:.3f} "
                    f"on {ev[f'pairs_vs_{which}']} held-out pairs"
                )
        if "win_rate_vs_base" in ev:
            low, high = ev["win_rate_ci95"]
            print(
                f"  win rate over the base model: {ev['win_rate_vs_base']:.3f} "
                f"(95% CI {low:.2f}-{high:.2f}, {ev['comparisons']} comparisons)"
            )
        if "win_rate_skipped" in ev:
            print(f"  win rate skipped: {ev['win_rate_skipped']}")
    return 0


def add_commands(sub) -> None:
    train = sub.add_parser(
        "train",
        help="train a DPO policy (or --reward-model) on the labelled rounds, then evaluate it",
        description="Train a LoRA policy with TRL on the labelled pairs of rounds 1..K (the "
        "released dataset's train split) and evaluate it on the held-out split; with "
        "--reward-model, a LoRA reward model instead. Settings: docs/training.md.",
    )
    train.add_argument("--round", default="", help="round key (default: the newest labelled)")
    train.add_argument("--loss", choices=["dpo", "ipo", "simpo"], default="dpo")
    train.add_argument("--reward-model", action="store_true", help="train the reward model")
    train.add_argument(
        "--warm-start", action="store_true", help="start from the previous round's adapter"
    )
    train.add_argument("--no-eval", action="store_true", help="train only (no policy_eval)")
    train.add_argument("--base-model", default="", help="default: the packaged SmolLM2-135M")
    train.add_argument("--device", default="", help="cpu, cuda, ... (default: auto)")
    train.add_argument("--max-steps", type=int, default=0, help="default: the preset's epochs")
    train.add_argument("--learning-rate", type=float, default=0.0)
    train.add_argument("--max-length", type=int, default=0, help="tokens per prompt + response")
    train.set_defaults(func=_train)
