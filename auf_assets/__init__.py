"""ActiveUltraFeedback as Dagster assets.

`auf_assets.core` holds the pure algorithms (no Dagster import); the Dagster wiring lives in the
other modules of this package and the `Definitions` object in `auf_assets.definitions`.
"""
