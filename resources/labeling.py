"""Where a round's labels come from, and the folders and rules of human labelling.

`LabelingSettings` is the one place for these settings: the `judgements` and `annotation_batch`
assets, the round sensors, the nightly schedule and `auf labels` all read it. The definitions and
the CLI build it with `labeling_from_env()`, so a deployment sets it once with environment
variables (the UI can still override it per run in the launchpad).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

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
    def people(self) -> bool:
        return self.source == "people"


def labeling_from_env(environ: dict[str, str] | None = None) -> LabelingSettings:
    """Settings from `AUF_LABEL_*`, `AUF_MAX_ROUNDS` and `AUF_ORACLE_POOL`; defaults otherwise.

    A bad value raises ValueError naming the variable.
    """
    env = os.environ if environ is None else environ
    values = {field: env[var] for var, field in ENV_VARS.items() if env.get(var, "").strip()}
    try:
        return LabelingSettings(**values)
    except Exception as exc:  # pydantic's message lists the field and the allowed values
        names = ", ".join(f"{v}={env[v]!r}" for v in ENV_VARS if env.get(v, "").strip())
        raise ValueError(f"bad labelling settings from the environment ({names}): {exc}") from exc
