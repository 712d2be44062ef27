"""`auf demo`: active rounds on the embedded default (or your prompts and run config)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from auf_assets.cli.common import failure_message, metadata, prepare_home
from resources.chain_lock import ChainBusy, round_chain


def _demo(args: argparse.Namespace) -> int:
    root = prepare_home()
    import dagster as dg

    from auf_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    print(f"home: {root}  (Dagster instance: {os.environ['DAGSTER_HOME']})")

    pool_config = {}
    if args.prompts.startswith("hf:"):
        pool_config["dataset"] = args.prompts[3:]
    elif args.prompts:
        pool_config["path"] = args.prompts
    if args.prompts_split:
        pool_config["split"] = args.prompts_split
    result = defs.resolve_job_def("prompt_ingestion").execute_in_process(
        instance=instance,
        run_config={"ops": {"prompt_pool": {"config": pool_config}}},
        raise_on_error=False,
    )
    if not result.success:
        print(f"prompt ingestion failed: {failure_message(result)}", file=sys.stderr)
        return 1
    pool_meta = metadata(result, "prompt_pool")
    print(
        f"prompt pool: {pool_meta.get('dagster/row_count')} prompts "
        f"({pool_meta.get('new_prompts')} new)"
    )

    run_config = {
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
        "ops": {
            "round_prompts": {"config": {"batch_size": args.batch_size}},
            "selected_pairs": {"config": {"method": args.method, "beta": args.beta}},
        },
    }
    if args.device:
        run_config["resources"] = {
            name: {"config": {"device": args.device}} for name in ("engine", "encoder", "judge")
        }
    if args.config:
        try:
            run_config = _merge(run_config, _read_run_config(args.config))
        except (OSError, ValueError) as exc:
            print(f"--config {args.config}: {exc}", file=sys.stderr)
            return 2
    try:
        # Held for the whole command: a second `auf demo` (or a round run from the UI) on this
        # home stops with a message instead of running rounds in between ours.
        with round_chain(root, f"auf demo (--rounds {args.rounds})"):
            return _run_rounds(instance, defs, run_config, args.rounds)
    except ChainBusy as exc:
        print(str(exc), file=sys.stderr)
        return 1


def _run_rounds(instance, defs, run_config: dict, rounds: int) -> int:
    from auf_assets.partitions import next_round_key, registered_rounds, rounds_partitions

    job = defs.resolve_job_def("active_round")
    summaries = []
    for _ in range(rounds):
        key = _round_to_run(instance, registered_rounds(instance)) or next_round_key(instance)
        instance.add_dynamic_partitions(rounds_partitions.name, [key])
        print(f"\n== {key}: running the active round")
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, partition_key=key, run_config=run_config, raise_on_error=False
        )
        wall = time.perf_counter() - started
        if not result.success:
            print(f"{key} failed: {failure_message(result)}", file=sys.stderr)
            print(
                "Fix the cause and run the same command again: the round is re-run.",
                file=sys.stderr,
            )
            return 1
        summaries.append(_round_summary(instance, result, key, wall))
        print(summaries[-1])
    print("\nDone. Browse the runs and the asset graph with `make dev` (dagster dev).")
    return 0


def _read_run_config(path: str) -> dict:
    import yaml  # YAML is a superset of JSON: one reader for both

    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML/JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError("a run config must be a mapping (ops:, resources:, ...)")
    return config


def _merge(base: dict, override: dict) -> dict:
    """`override` merged into `base`, mappings recursively; other values replace."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _round_to_run(instance, rounds: list[str]) -> str | None:
    """The newest round if its reward model never materialised (an interrupted round)."""
    import dagster as dg

    if not rounds:
        return None
    done = instance.get_materialized_partitions(dg.AssetKey("reward_model"))
    return None if rounds[-1] in done else rounds[-1]


def _round_summary(instance, result, key: str, wall: float) -> str:
    pairs = metadata(result, "selected_pairs")
    verdicts = metadata(result, "judgements")
    gens = metadata(result, "completions")
    model = metadata(result, "reward_model")
    stats = instance.get_run_step_stats(result.run_id)
    timings = ", ".join(
        f"{s.step_key} {s.end_time - s.start_time:.1f}s"
        for s in sorted(stats, key=lambda s: s.start_time or 0)
        if s.start_time and s.end_time
    )
    loss = ""
    if model.get("loss_before") is not None:
        loss = f"; reward-model loss {model['loss_before']:.4f} -> {model['loss_after']:.4f}"
    return (
        f"{key}: {gens.get('dagster/row_count')} responses "
        f"({gens.get('tokens_per_second')} tok/s), {pairs.get('dagster/row_count')} pairs by "
        f"{pairs.get('method')}, {verdicts.get('labelled_pairs')} labels used "
        f"({verdicts.get('ties')} ties, {verdicts.get('failed_pairs')} failed){loss}\n"
        f"  time per stage: {timings}\n  wall time: {wall:.1f}s"
    )


def add_commands(sub) -> None:
    demo = sub.add_parser("demo", help="run active rounds on the embedded default")
    demo.add_argument("--rounds", type=int, default=1, help="rounds to run (default 1)")
    demo.add_argument(
        "--prompts",
        default="",
        help="prompt file, datasets folder, or hf:<Hub dataset id> (default: the built-in demo "
        "set)",
    )
    demo.add_argument(
        "--prompts-split", default="", help="split of a saved DatasetDict or Hub dataset"
    )
    demo.add_argument("--batch-size", type=int, default=8, help="prompts per round")
    demo.add_argument("--method", default="deltaucb", help="acquisition function (auf methods)")
    demo.add_argument("--beta", type=float, default=1.0)
    demo.add_argument("--device", default="", help="cpu, cuda, ... (default: auto)")
    demo.add_argument(
        "--config", default="", help="YAML/JSON Dagster run config merged over the demo's"
    )
    demo.set_defaults(func=_demo)
