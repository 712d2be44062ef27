"""The names a label source may have in the settings (`labelling.source`, `AUF_LABEL_SOURCE`).

Only the names live here, so the labelling settings check themselves in every entry point (CLI,
environment, run config, sensors) without loading a model or Dagster. What each source does is
its adapter in `auf_assets.label_sources`; `register_label_source` there adds a new name here.
"""

from __future__ import annotations

BUILT_IN_LABEL_SOURCES = (
    "llm_judge",
    "reward_model_judge",
    "oracle",
    "people",
    "judge+people",
    "pairwise_judge",
)
MIXED_SOURCE = "judge+people"  # a judge labels every pair, people the ones it is unsure of
PEOPLE_SOURCES = ("people", MIXED_SOURCE)  # rounds wait for people's labels

_names: list[str] = list(BUILT_IN_LABEL_SOURCES)


def label_source_names() -> tuple[str, ...]:
    return tuple(_names)


def add_label_source_name(name: str) -> None:
    if not name or not name.replace("_", "").replace("-", "").replace("+", "").isalnum():
        raise ValueError(f"a label source name is letters, digits, '-', '_' and '+', got {name!r}")
    if name not in _names:
        _names.append(name)


def check_label_source(name: str) -> str:
    """`name` when it is a known label source; ValueError listing the known ones otherwise."""
    if name not in _names:
        raise ValueError(f"unknown label source {name!r}: one of {', '.join(_names)}")
    return name
