"""What the `auf` commands share: the home and its Dagster instance, and reading run results."""

from __future__ import annotations

import os
from pathlib import Path

from resources import home


def prepare_home() -> Path:
    """Create the home directory and point Dagster at its instance inside it."""
    root = home.auf_home()
    dagster_dir = home.dagster_home(root)
    dagster_dir.mkdir(parents=True, exist_ok=True)
    config = dagster_dir / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(dagster_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return root


def metadata(result, asset: str) -> dict:
    import dagster as dg

    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        if mat.asset_key == dg.AssetKey(asset):
            return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return {}


def failure_message(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            return f"{event.step_key}: {error.message.strip() if error else 'unknown error'}"
    return "the run failed"
