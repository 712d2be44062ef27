"""What the `auf` commands share: checked flag types, the home and its Dagster instance, running
a job of the definitions in this process, and reading its result (what failed, in one line)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auf_assets.core.settings import SettingsError, check_choice, check_method, range_problem
from resources import home

# The workspace `make dev` (dagster dev -w workspace.yaml) loads: it names the code location.
WORKSPACE = Path(__file__).resolve().parents[2] / "workspace.yaml"
DEFINITIONS_MODULE = "auf_assets.definitions"  # what `dagster dev -m ...` loads without it
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C
INTERRUPTS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt")
# -- flags checked when they are parsed: a bad value is refused before any work --------------------


def number(*, integer: bool = False, finite: bool = True, **bounds: Any) -> Callable[[str], Any]:
    """An argparse `type` for a number in a range (`ge`, `gt`, `le`, `lt`); the message says the
    range, e.g. "argument --batch-size: must be an integer in [1, inf), got -5"."""

    def parse(text: str) -> Any:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{'an integer' if integer else 'a number'} expected, got {text!r}"
            ) from None
        problem = range_problem(value, integer=integer, finite=finite, **bounds)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def setting(check: Callable[[Any], object], convert: Callable[[str], Any] = float):
    """An argparse `type` whose value is checked by building the settings object that owns it
    (`check(value)` raises with the allowed range), so the range is written once."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"{kind} expected, got {text!r}") from None
        try:
            check(value)
        except ValueError as exc:  # SettingsError and the settings' own checks
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def one_of(known: Callable[[], list[str]], what: str) -> Callable[[str], str]:
    """An argparse `type` for a name from `known()`; the message lists the valid names."""

    def parse(text: str) -> str:
        try:
            check_choice(text, known(), what)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return parse


def selection_method(families: tuple[str, ...] | None = None) -> Callable[[str], str]:
    """An argparse `type` for a method of the registry (of those families: a round runs
    reward-model and policy methods); the message lists the names it takes."""

    def parse(text: str) -> str:
        try:
            check_method(text, families)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return parse


def round_arg(text: str) -> str:
    """An argparse `type` for a round: `3`, `0003`, `round-3` and `round-0003` all name
    `round-0003`."""
    from auf_assets.partitions import round_key

    match = re.fullmatch(r"(?:round-)?(\d+)", text.strip())
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a round: give its number (3) or its key (round-0003)"
        )
    return round_key(int(match.group(1)))


def environment_refusal() -> str | None:
    """The rejected `AUF_*` values of the environment (engine, judge, labelling, budget,
    deployment), as one message for a command to refuse to start with; None when there is none."""
    from auf_assets.placement import DeploymentSettingError, gpu_tags
    from resources.environment import environment_problems

    problems = environment_problems()
    try:
        gpu_tags()  # AUF_DEPLOYMENT, AUF_K8S_*
    except DeploymentSettingError as exc:
        problems.append(str(exc))
    return "; ".join(problems) + ". Fix or unset the variables" if problems else None


def refuse(message: str) -> int:
    """Print why a command does not start (nothing was done) and return its exit code."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def prepare_home() -> Path:
    """Create the home directory and point Dagster at its instance inside it."""
    root = home.auf_home()
    os.environ["DAGSTER_HOME"] = str(home.ensure_dagster_home(root))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return root


def ui_run_tags() -> dict[str, str]:
    """Tags that file a run made by a command under its job and code location in the UI.

    A run launched from the UI records its code location (`dagster/code_location`) and its
    repository label (`.dagster/repository`): the job pages and the Overview list a job's runs
    by that label. `execute_in_process` knows no code location, so its runs would show apart
    from the job's; these are the tags the UI's own runs get, with the names `dagster dev`
    gives this project's location (read from workspace.yaml with Dagster's loader).
    """
    # Dagster's internals: the tag names and the label are what its run storage and webserver
    # use (dagster 1.13); there is no public API for them.
    from dagster._core.definitions.repository_definition.valid_definitions import (
        SINGLETON_REPOSITORY_NAME,
    )
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.storage.tags import CODE_LOCATION_TAG, REPOSITORY_LABEL_TAG
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    origins = location_origins_from_yaml_paths([str(WORKSPACE)]) if WORKSPACE.is_file() else []
    if len(origins) != 1:
        origins = [
            ManagedGrpcPythonEnvCodeLocationOrigin(
                LoadableTargetOrigin(module_name=DEFINITIONS_MODULE)
            )
        ]
    origin = origins[0]
    return {
        REPOSITORY_LABEL_TAG: RemoteRepositoryOrigin(origin, SINGLETON_REPOSITORY_NAME).get_label(),
        CODE_LOCATION_TAG: origin.location_name,
    }


def execute_job(console, job_name: str, run_config: dict, **kwargs):
    """Run a job of the definitions in this process on the home's instance, its records going
    to `console` (a `RunConsole`: stage lines, the full log in its file), tagged as the UI's
    runs are. Returns Dagster's result; a failure is in the result, not raised."""
    import dagster as dg

    from auf_assets.definitions import defs

    job = defs.resolve_job_def(job_name)
    job = job.with_logger_defs({**job.loggers, **console.logger_defs()})
    config = {**run_config}
    config["loggers"] = {**(config.get("loggers") or {}), **console.run_config_loggers()}
    return job.execute_in_process(
        instance=dg.DagsterInstance.get(),
        run_config=config,
        raise_on_error=False,
        tags=ui_run_tags(),
        **kwargs,
    )


def metadata(result, asset: str) -> dict:
    import dagster as dg

    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        if mat.asset_key == dg.AssetKey(asset):
            return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return {}


def _failures(result):
    """(event, error) of each failure event of the run: steps, resources, the run itself."""
    for event in result.all_events:
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if error is not None and (
            event.is_step_failure or event.is_run_failure or event.is_resource_init_failure
        ):
            yield event, error


def was_interrupted(result) -> bool:
    """Whether the run stopped because of Ctrl-C (or a termination signal)."""
    return any(
        info.cls_name in INTERRUPTS for _, error in _failures(result) for info in _chain(error)
    )


def failure_message(result) -> str:
    """Why the run failed, in words a person can act on (the trace is in the log file)."""
    failures = list(_failures(result))
    if was_interrupted(result):
        steps = [e.step_key for e, _ in failures if e.is_step_failure]
        return "interrupted (Ctrl-C)" + (f" during {steps[0]}" if steps else "")
    for event, error in failures:
        if event.is_step_failure:
            return f"{event.step_key}: {_readable(error)}"
    for event, error in failures:
        # A run can fail before any step does: a resource that could not start (its settings).
        if event.is_resource_init_failure:
            name = _resource_name(failures)
            which = f"the {name} resource" if name else "a resource"
            return f"{which} could not start: {_readable(error)}"
    for event, error in failures:
        if event.is_run_failure:
            return _readable(error)
    return "the run failed"


def _chain(info):
    while info is not None:
        yield info
        info = info.cause


def _readable(error) -> str:
    """The innermost error a person can fix, without Dagster's wrappers and module paths.

    An exception raised in a step or a resource is the cause of Dagster's "error occurred while
    executing op" / "Error executing resource_fn" wrapper: the cause is what matters.
    """
    info = error
    while info.cause is not None and (info.cls_name.startswith("Dagster") or not info.message):
        info = info.cause
    text = info.message.strip()
    qualified, sep, rest = text.partition(": ")
    if sep and qualified.endswith(info.cls_name) and " " not in qualified:
        # dg.Failure and Dagster's errors: the description is the message; others keep their
        # class name without the module path ("ReleaseError: ...").
        dagster_error = qualified.startswith("dagster.") or info.cls_name == "Failure"
        text = rest if dagster_error else f"{info.cls_name}: {rest}"
    return text


def _resource_name(failures) -> str | None:
    """The resource named by Dagster's "Error executing resource_fn on ResourceDefinition x"."""
    for _, error in failures:
        for info in _chain(error):
            match = re.search(r"on ResourceDefinition (\w+)", info.message)
            if match:
                return match.group(1)
    return None


# -- the console of commands that run jobs in this process (`auf demo`) -------------------------
#
# A person sees one live line per running stage (a progress bar on a terminal), one line per
# finished stage and the summaries the command prints; everything else goes to a log file under
# the home. The run's own record in the Dagster instance (the UI) is untouched: its event log is
# written by the instance's handler whatever loggers a run has.
#
# How: the jobs run with a Dagster logger of ours (`LoggerDefinition`, passed with
# `JobDefinition.with_logger_defs` and switched on in `run_config["loggers"]`). Dagster calls it
# with every record of the run, DEBUG events included, each carrying its `dagster_meta` (step key,
# original message, the `DagsterEvent`). It writes them all to the log file and turns the events
# into the stage lines. Steps report progress through `auf_assets.reporting.progress_logger`,
# which also calls the listener the console registers. Python warnings and the logs of libraries
# (transformers) go to the file too; Dagster's preview warnings, FutureWarning and
# DeprecationWarning are kept off the console.
#
# During a run Dagster mirrors the process's stdout and stderr into the run's compute logs (it
# points the file descriptors at a file and tails that back), so the console writes to its own
# copy of the original stdout: live lines reach the terminal at once and never end up in the
# compute logs.


def run_job(console, job_name: str, run_config: dict, **kwargs) -> tuple[object | None, int]:
    """Run a job of the definitions for a command: (result, 0) on success, else (None, the
    exit status) with one line said on the console (the trace is in the log file)."""
    import dagster as dg

    try:
        result = execute_job(console, job_name, run_config, **kwargs)
    except KeyboardInterrupt:
        console.log_exception(f"{job_name} interrupted")
        return None, _interrupted(console, job_name)
    except dg.DagsterError as exc:  # refused before it ran (its run config, say)
        console.log_exception(f"{job_name} could not start")
        console.error(f"{job_name} could not start: {str(exc).strip().splitlines()[0]}")
        console.error(f"The full log is in {console.log_path}.")
        return None, 1
    if result.success:
        return result, 0
    if was_interrupted(result):
        return None, _interrupted(console, job_name)
    console.error(f"{job_name} failed: {failure_message(result)}")
    console.error(
        f"The full log is in {console.log_path}. Nothing local was lost: fix the cause and run "
        "the same command again."
    )
    return None, 1


def _interrupted(console, job_name: str) -> int:
    console.error(
        f"{job_name} interrupted: nothing local was lost; run the same command again to finish "
        f"(the log is in {console.log_path})"
    )
    return INTERRUPTED
