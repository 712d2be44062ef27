"""Pure algorithms of the active preference loop: no Dagster imports here."""
