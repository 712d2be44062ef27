"""The one label-source resource: everything a step needs to get labels for pairs.

`label_source` bundles the labelling settings (which source labels, the people's folders and
rules, the oracle pool), the rubric LLM judge and the reward-model judge. It is built from the
resources under the keys `labelling`, `judge` and `reward_judge`, so those keep their own
run-config sections and environment variables (`resources.judge.config.device` still sets the
judge the label source asks), and a step takes one parameter, `label_source`, instead of three.

Why a resource function and not a `ConfigurableResource` with the three as nested resources:
a nested resource is configurable at launch only as a partial resource (`configure_at_launch`),
and a partial resource loses the values of its nested `Config` fields (the judge's `server`,
which `AUF_JUDGE_*` fill): Dagster keeps only the class defaults of such a field.

What a source does with them is its adapter, in `auf_assets.label_sources` (one module each).
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from resources.judge import RubricJudge
from resources.labelling import LabellingSettings
from resources.reward_judge import RewardModelJudge

#: the resource keys `label_source` is built from
PARTS = ("labelling", "judge", "reward_judge")


@dataclass(frozen=True)
class LabelSource:
    """The labelling settings and the two model judges a label source may ask."""

    labelling: LabellingSettings
    judge: RubricJudge
    reward_judge: RewardModelJudge

    @property
    def name(self) -> str:
        """The configured source (`labelling.source`): llm_judge, reward_model_judge, ..."""
        return self.labelling.source


@dg.resource(
    required_resource_keys=set(PARTS),
    description="Who labels a round's pairs: the labelling settings (`labelling.source`) and "
    "the rubric and reward-model judges, from the resources of the same names.",
)
def label_source(context: dg.InitResourceContext) -> LabelSource:
    return LabelSource(
        labelling=context.resources.labelling,
        judge=context.resources.judge,
        reward_judge=context.resources.reward_judge,
    )
