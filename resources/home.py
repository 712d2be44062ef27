"""Where everything the pipeline writes lives: one home directory.

`AUF_HOME` overrides the default `.auf/` under the current directory (the repo root when run
from the README). The layout below is the only place that knows these paths.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "AUF_HOME"


def auf_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.cwd() / ".auf").resolve()


def database_path(home: Path | None = None) -> Path:
    return (home or auf_home()) / "auf.duckdb"


def dagster_home(home: Path | None = None) -> Path:
    return (home or auf_home()) / "dagster"


def models_dir(home: Path | None = None) -> Path:
    return (home or auf_home()) / "models"


def features_dir(home: Path | None = None) -> Path:
    return (home or auf_home()) / "features"


def reward_models_dir(home: Path | None = None) -> Path:
    return (home or auf_home()) / "reward_models"


def labels_dir(home: Path | None = None) -> Path:
    """Human labelling: inbox/, outbox/, quarantine/ and imported/ live here."""
    return (home or auf_home()) / "labels"


def datasets_dir(home: Path | None = None) -> Path:
    """Built dataset versions, one folder each (what `auf export` copies and the Hub receives)."""
    return (home or auf_home()) / "datasets"
