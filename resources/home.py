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


def policy_dir(home: Path | None = None) -> Path:
    """Policy-aware selection: gradient features and ActiveDPO's state, per round."""
    return (home or auf_home()) / "policy"


def labels_dir(home: Path | None = None) -> Path:
    """Human labelling: inbox/, outbox/, quarantine/ and imported/ live here."""
    return (home or auf_home()) / "labels"


def logs_dir(home: Path | None = None) -> Path:
    """Full logs of `auf` commands (`auf demo` writes one file per call)."""
    return (home or auf_home()) / "logs"


def datasets_dir(home: Path | None = None) -> Path:
    """Built dataset versions, one folder each (what `auf export` copies and the Hub receives)."""
    return (home or auf_home()) / "datasets"


# The run queue admits one run of the round chain at a time (the round jobs carry this tag).
CHAIN_TAG_LIMIT = {"key": "auf/chain", "value": "rounds", "limit": 1}


def ensure_dagster_home(root: Path | None = None) -> Path:
    """The home's Dagster instance folder, with a dagster.yaml that serialises round runs.

    A dagster.yaml the user wrote is kept; only the round-chain run limit is added to it when
    missing (and telemetry is off in a new file).
    """
    import yaml

    folder = dagster_home(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dagster.yaml"
    config = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    if not path.exists():
        config["telemetry"] = {"enabled": False}
    if "run_queue" in config:
        return folder  # the old-style queue settings conflict with `concurrency`; leave them
    runs = config.setdefault("concurrency", {}).setdefault("runs", {})
    limits = runs.get("tag_concurrency_limits") or []
    if not any(lim.get("key") == CHAIN_TAG_LIMIT["key"] for lim in limits):
        runs["tag_concurrency_limits"] = [*limits, dict(CHAIN_TAG_LIMIT)]
        _replace_text(path, yaml.safe_dump(config, sort_keys=False))
    return folder


def _replace_text(path: Path, text: str) -> None:
    """Write `path` whole through a temporary file and a rename: a crash while a user's
    dagster.yaml is rewritten leaves the old file, never half of it (its mode is kept)."""
    import tempfile

    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
