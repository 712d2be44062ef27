"""How rounds advance by themselves: two sensors and a nightly schedule.

- `labels_landed` (people label; on by default, and quiet for another label source: it says
  why it does nothing on its first tick, then skips without a message): each tick imports the
  label files dropped in the inbox (valid files are recorded, bad ones quarantined), requests
  `labelled_round` (judgements + reward_model) for every round whose pairs are labelled (all of
  them, or `min_fraction` after `wait_hours`), with run_key `labels-<round>-<labels>` (the number
  of labels the round holds, so labels that arrive after a failed run start a new run), and, once
  the newest round's reward_model has materialised and no round run of it is queued or running,
  registers the next round partition and requests its `pair_selection` run with run_key
  `<round>` (e.g. `round-0003`). It never starts the first round.
- Late labels (imported after a round's reward model was trained, e.g. the rest of a round trained
  on `min_fraction`): while the round is still the newest (no later round registered or holding
  prompts), `labels_landed` trains it again on all its labels (same run_key rule) and starts the
  next round only after that run. Once a later round exists they are not used: that round started
  from the old checkpoint, and training the earlier round again would fork the chain. `auf labels
  status` says how many labels that is, and that re-running `labelled_round` for the round would
  make the later rounds stale.
- `next_round` (automatic judges; off by default): once the newest round's reward_model has
  materialised, registers the next round and requests its `active_round` run (run_key
  `<round>`); with no round yet, it starts `round-0001`.
- `nightly_round` (off by default; cron and time zone from `AUF_NIGHTLY_CRON`, default
  `0 2 * * *`, and `AUF_NIGHTLY_TIMEZONE`, default UTC): starts the next round when no round run
  is queued or in progress and no round is waiting for labels; a round that never finished (no
  reward_model, nothing running) is run again instead. Its round runs carry the round-chain tag
  (`auf_assets.jobs.ROUND_CHAIN_TAGS`) that the job-based requests get from their jobs.

Only round runs hold a round back (`round_runs_in_progress`): a run of a round job, or carrying
the round-chain tag, or of round assets. Training on the rounds (`policy_training`,
`reward_model_training`) and releases are partitioned by round too, but are not rounds; a skip
reason names the run and its kind (`run 1a2b3c4d of job labelled_round`).

Why the next round is requested on a later tick than the labelled round: round k+1's
reward_scores needs round k's reward_model checkpoint, and run requests of one sensor result are
launched independently (no ordering), so one result cannot both train round k and start round
k+1 safely. Re-evaluating a tick is harmless: every request carries a run_key per round (per
round and label count for `labelled_round`; the daemon launches a run_key once per sensor), the
partition is only added when the newest round is finished and no run of it is in progress, and
an imported file is never imported again.

Both sensors and the schedule stop, and say so in their skip reason, when the prompt pool is used
up (no prompt left that no round took), when `max_rounds` rounds exist, while the round
chain is stale (an earlier round was re-run: the rounds after it must be re-run first), or when
another round would pass the budget (`AUF_BUDGET_MAX_TOKENS/DOLLARS/LABELS`, see
`resources.ledger`: what was spent plus the mean round so far).

Bad settings never stop the code location from loading. A rejected `AUF_NIGHTLY_CRON` or
`AUF_NIGHTLY_TIMEZONE` leaves the schedule on the default at definition time, and every tick
skips naming the variable, its value and what is allowed; a rejected `AUF_LABEL_*` (or other
labelling variable, see `resources.labelling`) makes the sensors and the schedule skip with its
message, and the runs that use the settings fail with it.

With `publish_after_round` (`AUF_PUBLISH_AFTER_ROUND=1`, off by default) each of them also
requests the `dataset_release` job (build the dataset, push it to the Hub) once per finished
round, with run_key `release-<round>`; with `train_after_round` (`AUF_TRAIN_AFTER_ROUND=1`, off
by default) the `policy_training` job for that round (run_key `train-<round>`). A round whose
reward model is trained again (late labels) gets both again (`release-<round>-<event id>`).
"""

from __future__ import annotations

import json
import time
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string
from pydantic import field_validator

from auf_assets.jobs import (
    ROUND_CHAIN_TAG,
    ROUND_CHAIN_TAGS,
    ROUND_JOBS,
    SELECTION_ASSETS,
    active_round_job,
    labelled_round_job,
    pair_selection_job,
)
from auf_assets.label_inbox import label_status, scan_inbox
from auf_assets.labels import annotation_batch, judge_screening
from auf_assets.partitions import registered_rounds, round_index, round_key, rounds_partitions
from auf_assets.policy_loop import policy_logprobs
from auf_assets.release import RELEASE_ASSETS, dataset_release_job
from auf_assets.round import ROUND_ASSETS
from auf_assets.round_chain import chain_report, stale_rounds
from auf_assets.training import dpo_policy, policy_eval, policy_training_job
from resources.env_settings import EnvSettings, from_env
from resources.environment import environment_problems
from resources.labelling import LabellingSettings
from resources.ledger import ledger_from_env
from resources.store import DuckDBStore

POLICY_ASSETS = [dpo_policy, policy_eval]
# Runs that hold a round: queued, starting or running (a failed or cancelled run does not).
_ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
_REWARD_MODEL = dg.AssetKey("reward_model")
_RUN_KEY_TAG = "dagster/run_key"  # the tag a sensor's run carries its run_key in


def trained_rounds(instance: dg.DagsterInstance) -> set[str]:
    """Rounds whose reward_model has materialised (the round is finished)."""
    return set(instance.get_materialized_partitions(_REWARD_MODEL))


# The assets of the round chain (each holds the chain's lock, `holds_round_chain`): a run of any
# of them for a round partition is a round run. Training a policy or a reward model on the rounds
# (`policy_training`, `reward_model_training`) and releases read the rounds but are not rounds.
_ROUND_CHAIN_ASSETS = frozenset(
    a.key for a in (*ROUND_ASSETS, judge_screening, annotation_batch, policy_logprobs)
)
_ROUND_JOB_NAMES = frozenset(job.name for job in ROUND_JOBS)


@dataclass(frozen=True)
class RoundRun:
    """A queued or running run of a round: its id, and what kind of run it is."""

    run_id: str
    kind: str  # "job active_round", or the assets of a run started by asset selection

    def __str__(self) -> str:
        return f"run {self.run_id[:8]} of {self.kind}"


def _is_round_run(run: dg.DagsterRun) -> bool:
    if ROUND_CHAIN_TAG in run.tags or run.job_name in _ROUND_JOB_NAMES:
        return True
    return bool(run.asset_selection and run.asset_selection & _ROUND_CHAIN_ASSETS)


def _run_kind(run: dg.DagsterRun) -> str:
    if not run.job_name.startswith("__ASSET_JOB") or not run.asset_selection:
        return f"job {run.job_name}"
    names = sorted(key.to_user_string() for key in run.asset_selection)
    return f"assets {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"


def round_runs_in_progress(instance: dg.DagsterInstance) -> dict[str, RoundRun]:
    """round key -> the queued or running run of the round chain for that round partition.

    Only round runs count (`_is_round_run`): a training or release run of a round's partition
    does not hold the round back.
    """
    out = {}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE_STATUSES)):
        key = run.tags.get("dagster/partition", "")
        if _is_round_key(key) and _is_round_run(run):
            out[key] = RoundRun(run.run_id, _run_kind(run))
    return out


def _is_round_key(key: str) -> bool:
    try:
        round_index(key)
    except ValueError:
        return False
    return True


def after_round_requests(
    instance: dg.DagsterInstance, settings: LabellingSettings, trigger: str, *, schedule: bool
) -> list[dg.RunRequest]:
    """Once per finished round: push the dataset, train the round's policy (if switched on)."""
    trained = trained_rounds(instance)
    if not trained or not (settings.publish_after_round or settings.train_after_round):
        return []
    newest = max(trained, key=round_index)
    # Keyed by the reward_model materialisation too: a round trained again (late labels) is
    # published and trained on again; re-evaluating a tick still requests each once.
    version = _reward_model_version(instance, newest)
    tags = {"auf/trigger": trigger}
    out = []
    if settings.publish_after_round:
        target = (
            {"asset_selection": [a.key for a in RELEASE_ASSETS]}
            if schedule
            else {"job_name": dataset_release_job.name}
        )
        out.append(dg.RunRequest(run_key=f"release-{newest}{version}", tags=tags, **target))
    if settings.train_after_round:
        target = (
            {"asset_selection": [a.key for a in POLICY_ASSETS]}
            if schedule
            else {"job_name": policy_training_job.name}
        )
        out.append(
            dg.RunRequest(
                run_key=f"train-{newest}{version}", partition_key=newest, tags=tags, **target
            )
        )
    return out


def _reward_model_version(instance: dg.DagsterInstance, round_id: str) -> str:
    """'' for a round's first reward_model, '-<storage id>' for a later materialisation."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=_REWARD_MODEL, asset_partitions=[round_id]), limit=2
    ).records
    return f"-{records[0].storage_id}" if len(records) > 1 else ""


@dataclass(frozen=True)
class NextRound:
    key: str | None  # the round to start, or None with the reason why not
    reason: str


def plan_next_round(
    instance: dg.DagsterInstance,
    store: DuckDBStore,
    settings: LabellingSettings,
    *,
    start_first: bool,
) -> NextRound:
    """The next round to start, if the newest is finished and the stop conditions allow it."""
    rounds = registered_rounds(instance)
    done = 0
    if rounds:
        newest = rounds[-1]
        # A run of the newest round that is queued or running (its first run, or training it
        # again on late labels) changes its checkpoint: the next round starts after it.
        running = round_runs_in_progress(instance).get(newest)
        if running:
            return NextRound(None, f"{newest} is running ({running})")
        if newest not in trained_rounds(instance):
            what = "waiting for its labels or" if settings.people else "it failed or"
            return NextRound(
                None,
                f"{newest} has not finished (no reward_model yet: {what} was interrupted); the "
                "next round starts after it",
            )
        done = round_index(newest)
        stale = stale_rounds(chain_report(store))
        if stale:
            # A new round would build on a model whose own inputs have been replaced.
            return NextRound(
                None,
                f"the round chain is stale from {stale[0]} (an earlier round was re-run): re-run "
                f"{', '.join(stale)} in this order first (`auf rounds` shows why)",
            )
    elif not start_first:
        return NextRound(
            None,
            "no round has been started: start round-0001 yourself (launch pair_selection for a "
            "new partition in the UI, or enable nightly_round)",
        )
    if settings.max_rounds and done >= settings.max_rounds:
        return NextRound(
            None, f"stopped: max_rounds={settings.max_rounds} reached ({rounds[-1]} was the last)"
        )
    refusal = ledger_from_env().refusal(store)
    if refusal:
        return NextRound(None, f"stopped: {refusal}")
    unused = store.unused_prompt_count()
    if unused == 0:
        total = store.count_rows("prompts")
        if total == 0:
            return NextRound(None, "stopped: no prompts ingested yet (run prompt_ingestion)")
        return NextRound(
            None,
            f"stopped: the prompt pool is used up (all {total} prompts are in rounds); ingest "
            "more prompts to go on",
        )
    key = round_key(done + 1)
    after = f"{rounds[-1]} finished" if rounds else "no round yet"
    return NextRound(key, f"{after}: starting {key} ({unused} unused prompts)")


@dg.sensor(
    jobs=[pair_selection_job, labelled_round_job, dataset_release_job, policy_training_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="People label: imports label files from the inbox, trains on a round once its "
    "pairs are labelled, then starts the next round's pair selection. Does nothing unless the "
    "label source is 'people'; never starts the first round.",
)
def labels_landed(
    context: dg.SensorEvaluationContext, store: DuckDBStore, labelling: LabellingSettings
):
    problem = settings_problem(labelling)
    if problem:
        return dg.SkipReason(problem)
    if not labelling.people:
        return _idle(
            context,
            f"label source is {labelling.source!r}: labels_landed acts only when people label "
            "('people', 'judge+people') "
            "(turn on next_round to advance rounds with an automatic judge). Said once: later "
            "ticks skip quietly until the label source changes",
        )
    outcomes, cursor, waiting = scan_inbox(store, labelling, context.cursor, time.time())
    notes = []
    for outcome in outcomes:
        if outcome.status in ("imported", "already_imported"):
            context.log.info(outcome.summary())
        else:
            context.log.warning(outcome.summary())
        notes.append(outcome.summary())
    if waiting:
        notes.append(f"still being written, read on a later tick: {', '.join(waiting)}")

    instance = context.instance
    registered = registered_rounds(instance)
    trained = trained_rounds(instance)
    running = round_runs_in_progress(instance)
    requests = []
    retraining = []
    for status in label_status(store, labelling, registered=registered):
        rid = status.round_id
        if status.state == "waiting":
            notes.append(f"{rid}: {status.why}")
        if rid not in registered:
            continue
        if status.state == "retrain":
            retraining.append(rid)
        elif status.state != "ready" or rid in trained:
            continue
        # Requested even while a run of the round shows as in progress: the run_key makes the
        # daemon launch it once, and a killed run that still shows "started" cannot block it.
        # The key counts the round's labels: new labels after a failed run make a new run.
        run_key = f"labels-{rid}-{status.labels}"
        busy = f" ({running[rid]} in progress)" if rid in running else ""
        notes.append(f"{rid}: {status.why}: training on its labels{busy}")
        failed = _failed_run(instance, run_key)
        if failed:
            notes.append(
                f"{rid}: run {failed[:8]} ({run_key}) failed: it is tried again when more labels "
                f"arrive, or re-run labelled_round for {rid} in the UI once the cause is fixed"
            )
        requests.append(
            dg.RunRequest(
                job_name=labelled_round_job.name,
                partition_key=rid,
                run_key=run_key,
                tags={"auf/trigger": "labels_landed"},
            )
        )
    partitions = []
    if retraining:
        # Requests of one result launch in any order: the next round starts on a later tick,
        # from the checkpoint trained on the late labels.
        notes.append(f"the next round starts after {', '.join(retraining)} is trained again")
    else:
        plan = plan_next_round(instance, store, labelling, start_first=False)
        if plan.key is not None:
            partitions.append(plan.key)
            requests.append(
                dg.RunRequest(
                    job_name=pair_selection_job.name,
                    partition_key=plan.key,
                    run_key=plan.key,
                    tags={"auf/trigger": "labels_landed"},
                )
            )
        notes.append(plan.reason)
    requests += after_round_requests(instance, labelling, "labels_landed", schedule=False)
    if not requests:
        return dg.SensorResult(skip_reason="; ".join(notes), cursor=cursor)
    # A result with run requests carries no skip reason: the notes go to the tick's log.
    for note in notes:
        context.log.info(note)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=(
            [rounds_partitions.build_add_request(partitions)] if partitions else []
        ),
        cursor=cursor,
    )


def _idle(context: dg.SensorEvaluationContext, reason: str) -> dg.SensorResult:
    """Skip a sensor that does not apply to this label source, saying why on one tick only.

    The cursor keeps the reason given; later ticks skip without one (no message every 30 s from
    a sensor that is running by default) until the reason changes, e.g. the source does; a tick
    that acts replaces the cursor, so the reason is given again after it.
    """
    try:
        told = json.loads(context.cursor).get("told") if context.cursor else None
    except (ValueError, AttributeError):
        told = None
    if told == reason:
        return dg.SensorResult(cursor=context.cursor)
    return dg.SensorResult(skip_reason=reason, cursor=json.dumps({"told": reason}))


def _failed_run(instance: dg.DagsterInstance, run_key: str) -> str | None:
    """The id of a failed run that was launched with `run_key` (the daemon will not relaunch it)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={_RUN_KEY_TAG: run_key}, statuses=[dg.DagsterRunStatus.FAILURE]),
        limit=1,
    )
    return runs[0].run_id if runs else None


@dg.sensor(
    jobs=[active_round_job, dataset_release_job, policy_training_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Automatic judges: starts the next active round as soon as the newest round's "
    "reward_model has materialised (round-0001 when there is none), until the prompt pool is "
    "used up or max_rounds is reached.",
)
def next_round(
    context: dg.SensorEvaluationContext, store: DuckDBStore, labelling: LabellingSettings
):
    problem = settings_problem(labelling)
    if problem:
        return dg.SkipReason(problem)
    if labelling.people:
        return dg.SkipReason(
            f"label source is {labelling.source!r}: labels_landed advances the rounds"
        )
    plan = plan_next_round(context.instance, store, labelling, start_first=True)
    after = after_round_requests(context.instance, labelling, "next_round", schedule=False)
    if plan.key is None:
        if not after:
            return dg.SkipReason(plan.reason)
        # A result carries run requests or a skip reason, never both: the reason goes to the log.
        context.log.info(plan.reason)
        return dg.SensorResult(run_requests=after)
    context.log.info(plan.reason)
    requests = [
        dg.RunRequest(
            job_name=active_round_job.name,
            partition_key=plan.key,
            run_key=plan.key,
            tags={"auf/trigger": "next_round"},
        )
    ]
    return dg.SensorResult(
        run_requests=requests + after,
        dynamic_partitions_requests=[rounds_partitions.build_add_request([plan.key])],
    )


DEFAULT_NIGHTLY_CRON = "0 2 * * *"
DEFAULT_NIGHTLY_TIMEZONE = "UTC"
NIGHTLY_ENV = {"AUF_NIGHTLY_CRON": "cron", "AUF_NIGHTLY_TIMEZONE": "timezone"}


class NightlySettings(EnvSettings):
    """Cron and time zone of the nightly schedule (read from the environment when the code
    location loads: a rejected value leaves the default, and every tick skips naming it)."""

    SETTINGS_NAME: ClassVar[str] = "nightly_round"

    cron: str = DEFAULT_NIGHTLY_CRON
    timezone: str = DEFAULT_NIGHTLY_TIMEZONE

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not is_valid_cron_string(value):
            raise ValueError(
                "not a valid cron string (five fields: minute hour day-of-month month "
                f"day-of-week, e.g. {DEFAULT_NIGHTLY_CRON!r})"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                "not a known time zone (an IANA name such as 'UTC' or 'Europe/Zurich')"
            ) from None
        return value


def nightly_settings(environ: Mapping[str, str] | None = None) -> NightlySettings:
    """`AUF_NIGHTLY_CRON` / `AUF_NIGHTLY_TIMEZONE`, checked (never raises; see NightlySettings)."""
    return from_env(NightlySettings, NIGHTLY_ENV, environ)


def settings_problem(labelling: LabellingSettings) -> str | None:
    """Why no run may start now: a rejected value in the labelling settings the sensor got, or
    in any other `AUF_*` setting the runs it starts would use (engine, judge, budget)."""
    problems = [p for p in (labelling.problem, *environment_problems()) if p]
    return "; ".join(dict.fromkeys(problems)) or None


NIGHTLY = nightly_settings()


@dg.schedule(
    cron_schedule=NIGHTLY.cron,
    execution_timezone=NIGHTLY.timezone,
    target=dg.AssetSelection.assets(
        *ROUND_ASSETS, judge_screening, annotation_batch, *RELEASE_ASSETS, *POLICY_ASSETS
    ),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Nightly: starts the next round (pair selection when people label, the whole "
    "round otherwise) if no round is running or waiting for labels. Cron and time zone: "
    "AUF_NIGHTLY_CRON, AUF_NIGHTLY_TIMEZONE.",
)
def nightly_round(
    context: dg.ScheduleEvaluationContext, store: DuckDBStore, labelling: LabellingSettings
):
    if NIGHTLY.problem:
        return dg.SkipReason(NIGHTLY.problem)
    problem = settings_problem(labelling)
    if problem:
        return dg.SkipReason(problem)
    instance = context.instance
    running = round_runs_in_progress(instance)
    if running:
        keys = sorted(running, key=round_index)
        which = "; ".join(f"{key}: {running[key]}" for key in keys)
        return dg.SkipReason(f"{', '.join(keys)} running ({which}): no new round tonight")
    trained = trained_rounds(instance)
    if labelling.people:
        statuses = label_status(store, labelling, registered=registered_rounds(instance))
        retrain = [s for s in statuses if s.state == "retrain"]
        if retrain:
            s = retrain[0]
            return dg.SkipReason(f"{s.round_id} is trained again by labels_landed ({s.why})")
        pending = [
            s for s in statuses if s.state in ("waiting", "ready") and s.round_id not in trained
        ]
        if pending:
            s = pending[0]
            return dg.SkipReason(f"{s.round_id} is waiting for labels ({s.why})")
    selection = SELECTION_ASSETS if labelling.people else ROUND_ASSETS
    after = after_round_requests(instance, labelling, "nightly_round", schedule=True)
    rounds = registered_rounds(instance)
    if rounds and rounds[-1] not in trained:
        key = rounds[-1]  # never finished and nothing runs it: run it again
        refusal = ledger_from_env().refusal(store)
        if refusal:
            return after or dg.SkipReason(f"{key} never finished, and {refusal}")
        context.log.info(f"{key} never finished: running it again")
    else:
        plan = plan_next_round(instance, store, labelling, start_first=True)
        if plan.key is None:
            # No round to start (pool used up, max_rounds): still push the last one's dataset.
            return after or dg.SkipReason(plan.reason)
        key = plan.key
        # A schedule cannot return partition requests: register the round, then request it.
        instance.add_dynamic_partitions(rounds_partitions.name, [key])
        context.log.info(plan.reason)
    when = context.scheduled_execution_time or datetime.now()
    request = dg.RunRequest(
        partition_key=key,
        asset_selection=[a.key for a in selection],
        run_key=f"{key}-{when:%Y-%m-%d}",
        # By asset selection, not a job: the round-chain tag the round jobs carry is added here.
        tags={**ROUND_CHAIN_TAGS, "auf/trigger": "nightly_round"},
    )
    return [request, *after] if after else request


SENSORS = [labels_landed, next_round]
SCHEDULES = [nightly_round]
