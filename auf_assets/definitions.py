"""The Dagster code location: everything `dagster dev` shows."""

from __future__ import annotations

import dagster as dg

from auf_assets.bench import BENCH_ASSETS, BENCH_JOBS
from auf_assets.checks import ROUND_CHECKS
from auf_assets.jobs import (
    active_round_job,
    labelled_round_job,
    pair_selection_job,
    policy_round_job,
    prompt_ingestion_job,
)
from auf_assets.labels import annotation_batch, judge_screening
from auf_assets.placement import default_executor
from auf_assets.policy_loop import POLICY_ASSETS
from auf_assets.prompts import prompt_pool
from auf_assets.release import (
    RELEASE_ASSETS,
    RELEASE_CHECKS,
    dataset_build_job,
    dataset_release_job,
)
from auf_assets.round import ROUND_ASSETS
from auf_assets.training import (
    TRAINING_ASSETS,
    policy_training_job,
    reward_model_training_job,
)
from resources.encoder import FeatureEncoder
from resources.environment import environment_settings, hub_from_env
from resources.label_source import label_source
from resources.reward_judge import RewardModelJudge
from resources.reward_model import UncertaintyModel
from resources.store import DuckDBStore
from resources.training import TrainingResource
from sensors.rounds import SCHEDULES, SENSORS


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The embedded default: DuckDB file, packaged models, CPU or a GPU of this step's own.

    The engine, the judge, the labelling and the Hub repository come from `AUF_*` variables
    (`resources.environment`): where the pool and the judge run (an OpenAI-compatible server,
    vLLM, a device; by default transformers on the packaged SmolLM2), the label source and
    folders (by default the rubric LLM judge labels every round). A run config overrides any of
    it for one run (run config > environment > the code's defaults, the `default` preset).
    """
    from_env = environment_settings()
    return {
        "store": DuckDBStore(),
        "engine": from_env["engine"],
        "encoder": FeatureEncoder(),
        "judge": from_env["judge"],
        "reward_judge": RewardModelJudge(),
        "labelling": from_env["labelling"],
        # One resource for who labels: built from the three above (resources.label_source).
        "label_source": label_source,
        "uncertainty_model": UncertaintyModel(),
        "training": TrainingResource(),
        # The token is read from HF_TOKEN when a push starts (never stored in config).
        "hub": hub_from_env(),
    }


defs = dg.Definitions(
    assets=[
        prompt_pool,
        *ROUND_ASSETS,
        *POLICY_ASSETS,
        judge_screening,
        annotation_batch,
        *RELEASE_ASSETS,
        *TRAINING_ASSETS,
        *BENCH_ASSETS,
    ],
    asset_checks=[*ROUND_CHECKS, *RELEASE_CHECKS],
    jobs=[
        prompt_ingestion_job,
        active_round_job,
        pair_selection_job,
        labelled_round_job,
        policy_round_job,
        dataset_build_job,
        dataset_release_job,
        policy_training_job,
        reward_model_training_job,
        *BENCH_JOBS,
    ],
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=default_resources(),
    # AUF_DEPLOYMENT=k8s: each step in its own pod (dagster_k8s.k8s_job_executor, imported only
    # then); otherwise None, Dagster's default executor. See auf_assets/placement.py.
    executor=default_executor(),
)
