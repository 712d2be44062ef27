"""What the `auf` commands share: checked flag types, the home and its Dagster instance, and
reading run results."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auf_assets.core.settings import SettingsError, check_method, range_problem
from resources import home

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


def one_of(known: Callable[[], list[str]], what: str = "method") -> Callable[[str], str]:
    """An argparse `type` for a name from `known()`; the message lists the valid names."""

    def parse(text: str) -> str:
        try:
            check_method(text, known(), what)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return parse


def round_arg(text: str) -> str:
    """An argparse `type` for a round: `3`, `0003` or `round-0003` -> `round-0003`."""
    from auf_assets.partitions import round_index, round_key

    text = text.strip()
    try:
        return round_key(int(text) if text.isdigit() else round_index(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a round number or key (e.g. 3 or round-0003), got {text!r}"
        ) from None


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


def metadata(result, asset: str) -> dict:
    import dagster as dg

    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        if mat.asset_key == dg.AssetKey(asset):
            return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return {}


def failure_message(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            if error is None:
                return f"{event.step_key}: unknown error"
            # An exception raised in the step is the cause of Dagster's "error occurred while
            # executing op" wrapper: the cause is what a person can fix.
            info = error.cause or error
            text = info.message.strip()
            if info.cls_name == "Failure":  # dg.Failure: its description is the message
                text = text.split(": ", 1)[-1]
            return f"{event.step_key}: {text}"
    for event in result.all_events:
        # A run can fail before any step does (a resource whose settings are invalid).
        data = event.event_specific_data
        if event.is_run_failure and getattr(data, "error", None) is not None:
            return data.error.message.strip()
    return "the run failed"


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
