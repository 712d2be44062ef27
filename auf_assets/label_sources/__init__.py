"""The label sources: who gives a round's pairs their verdicts. One module per source, and this
registry, the one place that lists them.

A source is a `LabelSourceAdapter` (`base.py`): its name (the value of `labelling.source`), a
one-line description, `label(request) -> Labels` (verdicts per pair, `judge_scores` rows,
materialisation metadata) and, when it can judge answers no round generated, `score_answers`
(`policy_eval`'s win rate). The adapters live in the asset layer because they log, report
progress and add metadata through the step's Dagster context; the models they ask and the
settings come from the one `label_source` resource (`resources.label_source`).
"""

from __future__ import annotations

from auf_assets.core.label_sources import (
    BUILT_IN_LABEL_SOURCES,
    add_label_source_name,
    label_source_names,
)
from auf_assets.label_sources import mixed, oracle, pairwise, people, reward_model, rubric
from auf_assets.label_sources.base import LabelRequest, Labels, LabelSourceAdapter

_SOURCES: dict[str, LabelSourceAdapter] = {
    adapter.name: adapter
    for adapter in (
        rubric.SOURCE,
        reward_model.SOURCE,
        oracle.SOURCE,
        people.SOURCE,
        mixed.SOURCE,
        pairwise.SOURCE,
    )
}
assert tuple(_SOURCES) == BUILT_IN_LABEL_SOURCES, "every built-in name has its adapter"


def register_label_source(adapter: LabelSourceAdapter) -> None:
    """Add a label source for this process (a notebook, a test, a plugin imported by the code
    location); `labelling.source` accepts its name from then on."""
    if _SOURCES.get(adapter.name) is adapter:
        return
    if adapter.name in _SOURCES:
        raise ValueError(f"label source {adapter.name!r} exists already")
    add_label_source_name(adapter.name)
    _SOURCES[adapter.name] = adapter


def get_label_source(name: str) -> LabelSourceAdapter:
    try:
        return _SOURCES[name]
    except KeyError:
        raise ValueError(
            f"unknown label source {name!r}: one of {', '.join(label_source_names())}"
        ) from None


__all__ = [
    "LabelRequest",
    "LabelSourceAdapter",
    "Labels",
    "get_label_source",
    "register_label_source",
]
