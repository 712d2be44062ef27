"""`auf demo`: active rounds on the embedded default (or your prompts and run config).

The console shows one line per finished stage (and a live progress line while a stage runs), the
round summaries and where the full logs are: every Dagster record of every run goes to
`$AUF_HOME/logs/demo-<time>.log` (and, as always, to the run in the Dagster instance, the UI);
`--verbose` prints them on the console as well.

With an automatic judge (the default) each call runs `--rounds` whole rounds (`active_round`).
When people label (`AUF_LABEL_SOURCE=people`) a round is split where the labels come in, and a
call does what the `labels_landed` sensor would do without the daemon, with the sensor's rules
and code: it imports the label files waiting in the inbox, trains every round whose labels are
complete (`labelled_round`), then writes the next round's annotation batch (`pair_selection`),
says where the files are and how to hand the labels back, and stops until they are back.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from pathlib import Path

from auf_assets.cli.common import (
    environment_refusal,
    failure_message,
    metadata,
    number,
    prepare_home,
    refuse,
    selection_method,
    ui_run_tags,
)
from auf_assets.cli.console import RunConsole, job_console
from auf_assets.core.methods import ROUND_FAMILIES, get_method
from auf_assets.core.settings import DEFAULT_ROUND_PROMPTS, RoundSettings
from auf_assets.core.user_files import UserFileError, decode_utf8, read_limited, yaml_problem
from resources.chain_lock import ChainBusy, round_chain

# Jobs whose ops a demo run config configures; an op of one of them that another job lacks is
# left out of that job's config (other unknown ops still reach Dagster, which names them).
_ROUND_JOBS = ("active_round", "pair_selection", "labelled_round", "policy_round")

_DEFAULT = RoundSettings()  # the default preset
ROUNDS_HELP = (
    "automatic judge: rounds to run (default 1). People labelling (AUF_LABEL_SOURCE=people): "
    "the most new annotation batches to write; a call first trains every round whose labels "
    "are complete, and since a batch must come back labelled before the next round can start, "
    "it writes at most one"
)


def _demo(args: argparse.Namespace) -> int:
    # Everything is checked before any work: the flags when they were parsed, then the
    # environment's settings, then the whole run config of every job the demo will run.
    refusal = environment_refusal()
    if refusal:
        return refuse(refusal)
    run_config: dict = {
        "ops": {"selected_pairs": {"config": _selection_config(args)}},
    }
    if args.batch_size is not None:
        run_config["ops"]["round_prompts"] = {"config": {"batch_size": args.batch_size}}
    if args.device:
        run_config["resources"] = {
            name: {"config": {"device": args.device}} for name in ("engine", "encoder", "judge")
        }
    if args.config:
        try:
            run_config = _merge(run_config, _read_run_config(args.config))
        except (OSError, ValueError) as exc:
            return refuse(f"--config {args.config}: {exc}")
    try:
        labelling = _labelling_settings(run_config)
    except ValueError as exc:
        return refuse(str(exc))
    method = run_config["ops"].get("selected_pairs", {}).get("config", {}).get("method")
    try:
        selection = _round_method(method)  # a method from --config is checked here too
    except ValueError as exc:
        return refuse(f"selected_pairs.method: {exc}")
    round_jobs = ["labelled_round", "pair_selection"] if labelling.people else ["active_round"]
    if selection is not None and selection.family == "policy":
        if labelling.people:
            return refuse(
                f"{method} selects with the DPO policy, whose step runs in the policy_round job "
                "with an automatic judge; with people labelling use a reward-model method "
                "(auf methods), or run policy_round from the UI once the labels are in"
            )
        # The policy loop: the DPO step ends each round and the next round selects with it.
        round_jobs = ["policy_round"]
        run_config = _merge(_policy_round_config(method), run_config)

    # Warnings of the import (Dagster's preview warnings) go to the log file once it is open.
    with warnings.catch_warnings(record=True) as import_warnings:
        from auf_assets.definitions import defs
    from auf_assets.preflight import run_config_problems

    problems = [
        f"{job}: {problem}"
        for job in round_jobs
        for problem in run_config_problems(
            defs.resolve_job_def(job), _job_config(defs, job, run_config)
        )
    ]
    if problems:
        where = f"--config {args.config}" if args.config else "the demo's run config"
        return refuse(f"{where} has bad values; nothing was run:\n  " + "\n  ".join(problems))
    root = prepare_home()
    with job_console(root, "demo", verbose=args.verbose) as console:
        for w in import_warnings:
            console.showwarning(w.message, w.category, w.filename, w.lineno)
        return _demo_with(console, root, args, defs, run_config, labelling, round_jobs[-1])


def _demo_with(
    console: RunConsole,
    root: Path,
    args: argparse.Namespace,
    defs,
    run_config: dict,
    labelling,
    round_job: str,
) -> int:
    import dagster as dg

    instance = dg.DagsterInstance.get()
    console.say(f"home: {root}  (Dagster instance: {os.environ['DAGSTER_HOME']})")
    hint = "" if args.verbose else "  (--verbose prints them here too)"
    console.say(f"full logs: {console.log_path}{hint}")

    pool_config = {}
    if args.prompts.startswith("hf:"):
        pool_config["dataset"] = args.prompts[3:]
    elif args.prompts:
        pool_config["path"] = args.prompts
    if args.prompts_split:
        pool_config["split"] = args.prompts_split

    def ingest() -> bool:
        console.say("\n== prompt pool")
        run_config = {"ops": {"prompt_pool": {"config": pool_config}}}
        result = _execute(console, defs, instance, "prompt_ingestion", run_config)
        if not result.success:
            console.error(f"prompt ingestion failed: {failure_message(result)}")
        return result.success

    try:
        if not labelling.people and not ingest():
            code = 1
        else:
            # Held for the whole command: a second `auf demo` (or a round run from the UI) on
            # this home stops with a message instead of running rounds in between ours.
            with round_chain(root, f"auf demo (--rounds {args.rounds})"):
                if labelling.people:
                    code = _people_rounds(
                        console, instance, defs, run_config, labelling, args.rounds, ingest
                    )
                else:
                    code = _run_rounds(console, instance, defs, run_config, args.rounds, round_job)
    except ChainBusy as exc:
        console.error(str(exc))
        return 1
    if code == 0:
        console.say(
            f"\nFull logs: {console.log_path}. Browse the runs and the asset graph with "
            "`make dev` (dagster dev)."
        )
    elif console.interrupted:
        console.error(
            f"Interrupted: nothing stored was lost; run the same command again to go on (the "
            f"full log is in {console.log_path})."
        )
    else:
        console.error(
            f"The full log is in {console.log_path}. Fix the cause and run the same command "
            "again: the step is re-run."
        )
    return code


def _selection_config(args: argparse.Namespace) -> dict:
    """--method/--acquisition-width when given; otherwise SelectedPairsConfig's defaults (the
    default preset's)."""
    given = {"method": args.method, "acquisition_width": args.acquisition_width}
    return {key: value for key, value in given.items() if value is not None}


def _labelling_settings(run_config: dict):
    """The labelling settings the runs will use: the environment, then the run config's."""
    from resources.labelling import LabellingSettings, labelling_from_env

    settings = labelling_from_env()
    settings.check()
    override = ((run_config.get("resources") or {}).get("labelling") or {}).get("config") or {}
    if override:
        fields = {name: getattr(settings, name) for name in LabellingSettings.model_fields}
        try:
            settings = LabellingSettings(**{**fields, **override})
        except Exception as exc:  # pydantic's ValidationError, with every rejected field
            raise ValueError(f"resources.labelling.config in --config: {exc}") from exc
    return settings


def _job_config(defs, job_name: str, run_config: dict) -> dict:
    """`run_config` without the ops of other round jobs that `job_name` lacks."""
    ops = set(defs.resolve_job_def(job_name).graph.node_dict)
    known = set().union(*(defs.resolve_job_def(n).graph.node_dict for n in _ROUND_JOBS))
    config = dict(run_config)
    if "ops" in config:
        config["ops"] = {k: v for k, v in config["ops"].items() if k in ops or k not in known}
    return config


def _execute(console: RunConsole, defs, instance, job_name: str, run_config: dict, key=None):
    """Run a job of the definitions in this process, its records going to the console."""
    job = defs.resolve_job_def(job_name)
    job = job.with_logger_defs({**job.loggers, **console.logger_defs()})
    config = _job_config(defs, job_name, run_config)
    config["loggers"] = {**(config.get("loggers") or {}), **console.run_config_loggers()}
    return job.execute_in_process(
        instance=instance,
        partition_key=key,
        run_config=config,
        raise_on_error=False,
        tags=ui_run_tags(),
    )


def _run_round_job(console, instance, defs, run_config, job_name: str, key: str, what: str):
    """(result, wall seconds) of one round job; a failure is reported on stderr."""
    console.say(f"\n== {key}: {what}")
    started = time.perf_counter()
    result = _execute(console, defs, instance, job_name, run_config, key)
    wall = time.perf_counter() - started
    if not result.success:
        console.error(f"{key} failed: {failure_message(result)}")
    return result, wall


def _round_method(method: str | None):
    """The registry's entry of the method a round runs (None: the preset's default); a method
    a round cannot run (unknown, or an oracle baseline) fails before any run starts."""
    return None if method is None else get_method(method, families=ROUND_FAMILIES)


def _policy_round_config(method: str) -> dict:
    """The policy_round job's defaults, with gradient features when the method needs them."""
    from auf_assets.core.methods import get_method
    from auf_assets.jobs import POLICY_ROUND_CONFIG

    gradients = "gradients" in get_method(method).needs
    config = copy.deepcopy(POLICY_ROUND_CONFIG)
    config["ops"]["selected_pairs"] = {"config": {"method": method}}
    config["ops"]["policy_logprobs"] = {"config": {"gradient_features": gradients}}
    return config


def _run_rounds(
    console, instance, defs, run_config: dict, rounds: int, job: str = "active_round"
) -> int:
    from auf_assets.partitions import next_round_key, registered_rounds, rounds_partitions

    what = "running the active round" + (
        " (the DPO policy selects)" if job != "active_round" else ""
    )
    for _ in range(rounds):
        key = _round_to_run(instance, registered_rounds(instance), job) or next_round_key(instance)
        instance.add_dynamic_partitions(rounds_partitions.name, [key])
        result, wall = _run_round_job(console, instance, defs, run_config, job, key, what)
        if not result.success:
            return 1
        console.say(_round_summary(result, key, wall))
    return 0


# -- people label: the labels_landed sensor's work, run by hand ----------------------------------


def _people_rounds(
    console, instance, defs, run_config: dict, labelling, rounds: int, ingest
) -> int:
    """Import the inbox, train the labelled rounds, write at most `rounds` new batches.

    Runs nothing (no prompt ingestion either) while the newest round waits for its labels.
    """
    from auf_assets.label_inbox import label_status, scan_inbox
    from auf_assets.partitions import registered_rounds, rounds_partitions
    from resources.store import DuckDBStore
    from sensors.rounds import plan_next_round, trained_rounds

    store = DuckDBStore()
    console.say(f"\nlabels come from people: inbox {labelling.inbox_dir}")
    outcomes, _, waiting = scan_inbox(store, labelling, None, time.time())
    for outcome in outcomes:
        if outcome.status in ("imported", "already_imported"):
            console.say(f"  {outcome.summary()}")
        else:
            console.error(f"  {outcome.summary()}")
    if waiting:
        console.say(
            f"  still being written, read on the next call: {', '.join(waiting)} (files younger "
            f"than {labelling.settle_seconds:g}s)"
        )

    # 1. Train every round whose labels are complete, by the sensor's rules (label_status).
    registered = registered_rounds(instance)
    trained = trained_rounds(instance)
    for status in label_status(store, labelling, registered=registered):
        rid = status.round_id
        if rid not in registered:
            continue
        if status.state != "retrain" and (status.state != "ready" or rid in trained):
            continue
        result, wall = _run_round_job(
            console,
            instance,
            defs,
            run_config,
            "labelled_round",
            rid,
            f"training on the labels ({status.why})",
        )
        if not result.success:
            return 1
        console.say(_round_summary(result, rid, wall))

    # 2. The next batches: a round whose batch was never written (interrupted) first, then new
    # rounds as the sensor would start them (plan_next_round), while the newest is trained.
    written, ingested = 0, False
    while True:
        keys = registered_rounds(instance)
        newest = keys[-1] if keys else None
        if newest and newest not in trained_rounds(instance):
            status = _status_of(label_status(store, labelling, registered=keys), newest)
            if status is not None and status.state != "not_sent":
                _waiting_message(console, status, labelling)
                return 0
            key = newest  # registered, but its pair_selection never finished
        elif written >= rounds:  # not reached while each new batch waits for its labels
            console.say(f"\n--rounds {rounds}: no further batch this time")
            return 0
        else:
            if not ingested:
                if not ingest():
                    return 1
                ingested = True
            plan = plan_next_round(instance, store, labelling, start_first=True)
            if plan.key is None:
                console.say(f"\nno new round: {plan.reason}")
                return 0
            key = plan.key
            instance.add_dynamic_partitions(rounds_partitions.name, [key])
        result, wall = _run_round_job(
            console,
            instance,
            defs,
            run_config,
            "pair_selection",
            key,
            "selecting pairs for people to label",
        )
        if not result.success:
            return 1
        written += 1
        console.say(_round_summary(result, key, wall))


def _status_of(statuses, round_id: str):
    return next((s for s in statuses if s.round_id == round_id), None)


def _waiting_message(console: RunConsole, status, labelling) -> None:
    console.say(f"\n{status.round_id} waits for its labels: {status.why}.")
    console.say("Label the pairs (choice A, B or tie; see docs/labelling.md) in one of:")
    for kind, path in status.outbox.items():
        extra = "  (interface: labelstudio_config.xml)" if kind == "labelstudio" else ""
        console.say(f"  {path}{extra}")
    console.say(
        "then hand the file back with `auf labels import FILE`, or drop it into "
        f"{labelling.inbox_dir}, and run `auf demo` again: it trains {status.round_id} and writes "
        "the next round's batch."
    )


# -- run config and summaries --------------------------------------------------------------------


# A run config is a page of YAML; anything larger is not one.
MAX_RUN_CONFIG_BYTES = 1_000_000


def _read_run_config(path: str) -> dict:
    """The run config in the file (a regular file, UTF-8; no message quotes it: user_files)."""
    import yaml  # YAML is a superset of JSON: one reader for both

    try:
        text = decode_utf8(read_limited(path, max_bytes=MAX_RUN_CONFIG_BYTES), path)
        config = yaml.safe_load(text)
    except UserFileError as exc:
        raise ValueError(exc.problem) from None
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML/JSON ({yaml_problem(exc)})") from None
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


def _round_to_run(instance, rounds: list[str], job: str = "active_round") -> str | None:
    """The newest round if its last step never materialised (an interrupted round): the reward
    model, and for a round of the policy loop also the DPO step the next round selects with."""
    import dagster as dg

    if not rounds:
        return None
    newest = rounds[-1]
    if newest not in instance.get_materialized_partitions(dg.AssetKey("reward_model")):
        return newest
    stepped = instance.get_materialized_partitions(dg.AssetKey("dpo_policy"))
    if job == "policy_round" and newest not in stepped and _selected_by_policy(newest):
        return newest
    return None


def _selected_by_policy(round_id: str) -> bool:
    """Whether the round's pairs were picked by a policy-aware method (a policy-loop round; its
    first round's pairs are random, with `fallback` set, but its method is the policy's)."""
    from auf_assets.core.methods import method_names
    from resources.store import DuckDBStore

    methods = DuckDBStore().round_rows("pairs", round_id)["method"].to_list()
    return any(m in method_names("policy") for m in methods)


def _round_summary(result, key: str, wall: float) -> str:
    """One round's (or half round's) summary from its materializations."""
    parts = []
    gens = metadata(result, "completions")
    if gens:
        speed = gens.get("tokens_per_second")
        parts.append(
            f"{gens.get('dagster/row_count')} responses" + (f" ({speed} tok/s)" if speed else "")
        )
    pairs = metadata(result, "selected_pairs")
    if pairs:
        parts.append(f"{pairs.get('dagster/row_count')} pairs by {pairs.get('method')}")
    screening = metadata(result, "judge_screening")
    if screening.get("screened"):
        parts.append(
            f"the judge labelled {screening.get('dagster/row_count')} pairs "
            f"({screening.get('unsure')} unsure, {screening.get('calibration')} for calibration)"
        )
    batch = metadata(result, "annotation_batch")
    if batch.get("written"):
        parts.append(f"{batch.get('dagster/row_count')} pairs sent out for labelling")
    verdicts = metadata(result, "judgements")
    if verdicts:
        failed = verdicts.get("failed_pairs")
        parts.append(
            f"{verdicts.get('labelled_pairs')} labels used ({verdicts.get('ties')} ties"
            + (f", {failed} failed)" if failed is not None else ")")
        )
    model = metadata(result, "reward_model")
    if model.get("loss_before") is not None:
        parts.append(f"reward-model loss {model['loss_before']:.4f} -> {model['loss_after']:.4f}")
    policy = metadata(result, "dpo_policy")
    if policy.get("steps") is not None:
        parts.append(f"DPO step of {policy['steps']} steps on {policy.get('train_pairs')} pairs")
    lines = [f"{key}: {', '.join(parts)}; wall time {wall:.1f}s"]
    if pairs.get("fallback") not in (None, "none"):
        lines.append(
            f"  pairs picked by {pairs['fallback']} instead of {pairs.get('method')} (no DPO step "
            "yet: the policy is the reference)"
        )
    elif pairs.get("mean_abs_implicit_margin") is not None:
        lines.append(
            f"  mean implicit-reward margin of the selected pairs "
            f"{pairs['mean_abs_implicit_margin']:.4f} (policy of {pairs.get('policy_round')})"
        )
    gap, rand = pairs.get("mean_predicted_gap"), pairs.get("random_pair_predicted_gap")
    if gap is not None and rand is not None:
        lines.append(
            f"  mean predicted gap of the selected pairs {gap:.3f}, of a random pick {rand:.3f}"
        )
    requests = sum(m.get("requests", 0) for m in (gens, verdicts))
    if requests:
        retries = sum(m.get("retries", 0) for m in (gens, verdicts))
        priced = [m["dollars"] for m in (gens, verdicts) if "dollars" in m]  # no table: none
        spent = f"${sum(priced):.4f}" if priced else "$- (no price table)"
        lines.append(
            f"  ledger: {requests} model requests, {retries} retries, {spent} "
            "(`auf cost` for the details)"
        )
    return "\n".join(lines)


def add_commands(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="run active rounds on the embedded default",
        description="Run active rounds on this home (AUF_HOME, default .auf). With an automatic "
        "judge each call runs --rounds whole rounds. With AUF_LABEL_SOURCE=people a call imports "
        "the label files in the inbox, trains every round whose labels are complete (the "
        "labels_landed sensor's rules), then writes the next round's annotation batch to the "
        "outbox and says how to hand the labels back (`auf labels import FILE`, or the inbox); "
        "while labels are missing it prints the progress and exits 0. The console shows the "
        "stages and the summaries; the full Dagster logs are in $AUF_HOME/logs/demo-<time>.log "
        "and in the Dagster UI.",
    )
    demo.add_argument("--rounds", type=number(integer=True, ge=1), default=1, help=ROUNDS_HELP)
    demo.add_argument(
        "--prompts",
        default="",
        help="prompt file, datasets folder, or hf:<Hub dataset id> (default: the built-in demo "
        "set)",
    )
    demo.add_argument(
        "--prompts-split", default="", help="split of a saved DatasetDict or Hub dataset"
    )
    demo.add_argument(
        "--batch-size",
        type=number(integer=True, ge=1),
        default=None,
        help=f"prompts per round (default {DEFAULT_ROUND_PROMPTS})",
    )
    demo.add_argument(
        "--method",
        type=selection_method(ROUND_FAMILIES),
        default=None,
        help=f"selection method (auf methods; default: the default preset's, {_DEFAULT.method})",
    )
    demo.add_argument(
        "--acquisition-width",
        "--beta",  # the old name
        dest="acquisition_width",
        type=number(ge=0),
        default=None,
        help="bounds are mu -/+ width * sigma (default: the preset's, "
        f"{_DEFAULT.acquisition_width:g})",
    )
    demo.add_argument("--device", default="", help="cpu, cuda, ... (default: auto)")
    demo.add_argument(
        "--config", default="", help="YAML/JSON Dagster run config merged over the demo's"
    )
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="print every Dagster log line (DEBUG events included) and every warning on the "
        "console, as well as in the log file",
    )
    demo.set_defaults(func=_demo)
