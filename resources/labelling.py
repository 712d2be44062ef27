"""Where a round's labels come from, and the folders and rules of human labelling.

`LabellingSettings` is the one place for these settings: the `judgements` and `annotation_batch`
assets, the round sensors, the nightly schedule and `auf labels` all read it. The definitions and
the CLI build it with `labelling_from_env()`, so a deployment sets it once with environment
variables (the UI can still override it per run in the launchpad). A rejected variable never stops
the code location from loading; everything that uses the settings stops with its message (see
`resources.env_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from auf_assets.core.label_sources import MIXED_SOURCE, PEOPLE_SOURCES, check_label_source
from auf_assets.core.routing import RoutingRule
from resources import home
from resources.env_settings import EnvSettings, from_env

# environment variable -> LabellingSettings field
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
    "AUF_LABEL_SCREENING_JUDGE": "screening_judge",
    "AUF_LABEL_PEOPLE_THRESHOLD": "people_threshold",
    "AUF_LABEL_PEOPLE_BUDGET": "people_budget",
    "AUF_LABEL_CALIBRATION_SHARE": "calibration_share",
    "AUF_LABEL_MIN_AGREEMENT": "min_agreement",
    "AUF_PUBLISH_AFTER_ROUND": "publish_after_round",
    "AUF_TRAIN_AFTER_ROUND": "train_after_round",
}


class LabellingSettings(EnvSettings):
    """The label source of every round, and the human-labelling inbox/outbox and rules."""

    SETTINGS_NAME: ClassVar[str] = "labelling"

    source: str = Field(
        default="llm_judge",
        description="who labels the selected pairs: llm_judge (rubric LLM), reward_model_judge "
        "(a sequence-classification reward model), oracle (scores in a pool file), people, "
        "judge+people (the screening_judge labels every pair, people the ones it is unsure of), "
        "pairwise_judge (the judge model compares the two responses, in both orders), "
        "or a source registered with auf_assets.label_sources.register_label_source",
    )
    screening_judge: str = Field(
        default="llm_judge",
        description="judge+people: the source that labels every pair first (llm_judge, "
        "pairwise_judge, reward_model_judge, or a registered source that gives a confidence)",
    )
    people_threshold: float = Field(
        default=0.75,
        ge=0.0,
        le=1.0,
        description="judge+people: pairs whose verdict the judge gives with a confidence "
        "(P(chosen is better)) below this go to people, and so do its ties and failures; 0 = no "
        "threshold (then people_budget alone picks them)",
    )
    people_budget: int = Field(
        default=0,
        ge=0,
        description="judge+people: at most this many unsure pairs a round go to people, the "
        "least confident first; 0 = no cap",
    )
    calibration_share: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="judge+people: this share of the pairs the judge is sure of (at least one a "
        "round) also goes to people, so its agreement with people is measured where it decides "
        "alone; 0 = none",
    )
    min_agreement: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="the judge_agreement check warns when the judge agrees with people on fewer "
        "than this share of the pairs both decided",
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

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        return check_label_source(value)

    @model_validator(mode="after")
    def _mixed_sends_pairs(self) -> LabellingSettings:
        rule = (self.people_threshold, self.people_budget, self.calibration_share)
        if self.source == MIXED_SOURCE and not any(rule):
            raise ValueError(
                "judge+people with people_threshold, people_budget and calibration_share all 0 "
                "sends no pair to people: set one of them, or use the judge alone (llm_judge)"
            )
        return self

    @field_validator("screening_judge")
    @classmethod
    def _judge_source(cls, value: str) -> str:
        if value in PEOPLE_SOURCES:
            raise ValueError(f"the screening judge labels on its own: not {value!r}")
        return check_label_source(value)

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
        """People label some or all pairs: rounds run in two halves, the labels in between."""
        return self.source in PEOPLE_SOURCES

    @property
    def mixed(self) -> bool:
        """The judge labels every pair and people the ones it is unsure of (`judge+people`)."""
        return self.source == MIXED_SOURCE

    @property
    def routing_rule(self) -> RoutingRule:
        return RoutingRule(self.people_threshold, self.people_budget, self.calibration_share)


def labelling_from_env(environ: Mapping[str, str] | None = None) -> LabellingSettings:
    """Settings from `AUF_LABEL_*`, `AUF_MAX_ROUNDS`, `AUF_ORACLE_POOL`, `AUF_PUBLISH_AFTER_ROUND`
    and `AUF_TRAIN_AFTER_ROUND`; defaults otherwise (rejected values in `env_errors`)."""
    return from_env(LabellingSettings, ENV_VARS, environ)
