"""Dagster resources: the store, the model engines, the feature encoder and the judge."""

from resources.encoder import FeatureEncoder
from resources.engine import GenerationEngine
from resources.home import auf_home
from resources.judge import RubricJudge
from resources.store import DuckDBStore

__all__ = ["DuckDBStore", "FeatureEncoder", "GenerationEngine", "RubricJudge", "auf_home"]
