"""Where a round's labels come from, and the folders and rules of human labelling.

`LabelingSettings` is the one place for these settings: the `judgements` and `annotation_batch`
assets, the round sensors, the nightly schedule and `auf labels` all read it. The definitions and
the CLI build it with `labeling_from_env()`, so a deployment sets it once with environment
variables (the UI can still override it per run in the launchpad).

A bad value in the environment never stops the code location from loading: `labeling_from_env`
keeps the valid values, leaves the field of a rejected one at its default and records why in
`env_errors`. Everything that uses the settings then stops with that message (`problem`): a run
fails when the resource is set up (`setup_for_execution`), the round sensors and the nightly
schedule skip their ticks (they build the resource too, outside a run, and check it first), and
`auf labels` exits with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, ValidationError

from resources import home

LabelSource = Literal["llm_judge", "reward_model_judge", "oracle", "people"]
LABEL_SOURCES: tuple[str, ...] = ("llm_judge", "reward_model_judge", "oracle", "people")

# environment variable -> LabelingSettings field
ENV_VARS = {
    "AUF_LABEL_SOURCE": "source",
    "AUF_LABEL_INBOX": "inbox",
    "AUF_LABEL_OUTBOX": "outbox",
    "AUF_LABEL_QUARANTINE": "quarantine",
    "AUF_LABEL_ARCHIVE": "archive",
    "AUF_LABEL_MIN_FRACTION": "min_fraction",
    "AUF_LABEL_WAIT_HOURS": "wait_hours",
    "AUF_LABEL_RESOLUTION": "resolution",
    "AUF_LABEL_SETTLE_SECONDS": "settle_seconds",
    "AUF_LABEL_MAX_FILE_MB": "max_file_mb",
    "AUF_LABEL_MAX_PROBLEMS": "max_problems",
    "AUF_MAX_ROUNDS": "max_rounds",
    "AUF_ORACLE_POOL": "oracle_pool",
    "AUF_PUBLISH_AFTER_ROUND": "publish_after_round",
    "AUF_TRAIN_AFTER_ROUND": "train_after_round",
}


class LabelingSettings(dg.ConfigurableResource):
    """The label source of every round, and the human-labelling inbox/outbox and rules."""

    source: LabelSource = Field(
        default="llm_judge",
        description="who labels the selected pairs: llm_judge (rubric LLM), reward_model_judge "
        "(a sequence-classification reward model), oracle (scores in a pool file) or people",
    )
    inbox: str = Field(
        default="", description="label files are dropped here ($AUF_HOME/labels/inbox)"
    )
    outbox: str = Field(
        default="", description="annotation batches are written here ($AUF_HOME/labels/outbox)"
    )
    quarantine: str = Field(
        default="",
        description="rejected label files and their .reason ($AUF_HOME/labels/quarantine)",
    )
    archive: str = Field(
        default="", description="imported label files are moved here ($AUF_HOME/labels/imported)"
    )
    min_fraction: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="a round counts as labelled when all its pairs are, or when at least this "
        "fraction is and wait_hours have passed since its batch was written",
    )
    wait_hours: float = Field(default=24.0, ge=0.0, description="see min_fraction")
    resolution: Literal["majority", "unanimous"] = Field(
        default="majority", description="how several labels of one pair become one verdict"
    )
    settle_seconds: float = Field(
        default=5.0,
        ge=0.0,
        description="a file younger than this is read on a later tick (it may still be written)",
    )
    max_file_mb: float = Field(
        default=50.0,
        gt=0.0,
        description="a label file larger than this (MB) is refused without being read",
    )
    max_problems: int = Field(
        default=20,
        ge=1,
        description="checking a label file stops after this many problems (it is rejected; the "
        "reason lists them and says there are more)",
    )
    max_rounds: int = Field(
        default=0, ge=0, description="stop after this many rounds; 0 = no limit"
    )
    oracle_pool: str = Field(
        default="", description="pool file with completion_id and oracle_score (source: oracle)"
    )
    publish_after_round: bool = Field(
        default=False,
        description="the round sensors and the nightly schedule push the dataset to the Hub "
        "(the dataset_release job) after every finished round; needs HF_TOKEN and AUF_HUB_REPO",
    )
    train_after_round: bool = Field(
        default=False,
        description="the round sensors and the nightly schedule train and evaluate the round's "
        "DPO policy (the policy_training job) after every finished round",
    )
    env_errors: str = Field(
        default="",
        description="set by labeling_from_env: the AUF_* variables whose values were rejected "
        "(their fields keep the default). While it is not empty, runs that use these settings "
        "fail and the round sensors and the nightly schedule skip, saying why; fix the variables "
        "and reload the code location",
    )

    @property
    def problem(self) -> str | None:
        """Why these settings must not be used (rejected environment values), or None."""
        if not self.env_errors:
            return None
        return (
            f"bad labelling settings in the environment: {self.env_errors}. Fix or unset them "
            "and reload the code location (restart `dagster dev`)"
        )

    def check(self) -> None:
        """Raise ValueError with `problem` when the environment held a rejected value."""
        if self.env_errors:
            raise ValueError(self.problem)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Dagster sets a ConfigurableResource up for sensor and schedule ticks as well as runs
        # (the tick's resources are built the same way). Only a run fails here; a tick has no
        # run, and the sensors and the schedule skip with `problem` themselves.
        if self.env_errors and context.run is not None:
            raise dg.Failure(description=self.problem)

    def _dir(self, value: str, name: str) -> Path:
        return Path(value) if value else home.labels_dir() / name

    @property
    def inbox_dir(self) -> Path:
        return self._dir(self.inbox, "inbox")

    @property
    def outbox_dir(self) -> Path:
        return self._dir(self.outbox, "outbox")

    @property
    def quarantine_dir(self) -> Path:
        return self._dir(self.quarantine, "quarantine")

    @property
    def archive_dir(self) -> Path:
        return self._dir(self.archive, "imported")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1_000_000)

    @property
    def people(self) -> bool:
        return self.source == "people"


def _reason(exc: ValidationError, field: str) -> str:
    msg = "; ".join(e["msg"] for e in exc.errors()) or str(exc)
    if LabelingSettings.model_fields[field].annotation is bool:
        msg = "input should be one of 1/0, true/false, yes/no, on/off"
    return msg[:1].lower() + msg[1:]


def labeling_from_env(environ: Mapping[str, str] | None = None) -> LabelingSettings:
    """Settings from `AUF_LABEL_*`, `AUF_MAX_ROUNDS` and `AUF_ORACLE_POOL`; defaults otherwise.

    Never raises: each variable is checked on its own, a rejected one leaves its field at the
    default and its message (variable, value, what is allowed) goes to `env_errors`, so every
    user of the settings stops with it (module docstring) while the code location still loads.
    """
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    errors: list[str] = []
    for var, field in ENV_VARS.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            LabelingSettings(**{field: raw})
        except ValidationError as exc:
            errors.append(f"{var}={raw!r} is invalid ({field}: {_reason(exc, field)})")
            continue
        values[field] = raw
    return LabelingSettings(**values, env_errors="; ".join(errors))
