"""What the `auf` commands share: the home and its Dagster instance, and reading run results."""

from __future__ import annotations

import os
from pathlib import Path

from resources import home


def prepare_home() -> Path:
    """Create the home directory and point Dagster at its instance inside it."""
    root = home.auf_home()
    os.environ["DAGSTER_HOME"] = str(home.ensure_dagster_home(root))
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
    for event in result.all_events:
        # A run can fail before any step does (a resource whose settings are invalid).
        data = event.event_specific_data
        if event.is_run_failure and getattr(data, "error", None) is not None:
            return data.error.message.strip()
    return "the run failed"
