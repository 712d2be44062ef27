"""Dagster resources: the store, the model engines, the feature encoder and the judge.

The names below are imported when first used, so a light module (`resources.home`, the CLI's
argument checks) does not pull in torch and Dagster.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DuckDBStore": "resources.store",
    "FeatureEncoder": "resources.encoder",
    "GenerationEngine": "resources.engine",
    "RubricJudge": "resources.judge",
    "auf_home": "resources.home",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'resources' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
