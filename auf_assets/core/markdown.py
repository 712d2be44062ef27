"""Frames as short markdown tables, for run metadata and reports (no Dagster here: the resources
and the assets wrap the text in their metadata)."""

from __future__ import annotations

import polars as pl


def markdown_table(df: pl.DataFrame, max_rows: int = 8, max_chars: int = 80) -> str:
    """A markdown table of the first `max_rows` rows, long text cut to `max_chars`."""
    head = df.head(max_rows)

    def cell(value: object) -> str:
        text = "" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
        text = text.replace("\n", " ").replace("|", "\\|")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    lines = [
        "| " + " | ".join(head.columns) + " |",
        "|" + "---|" * len(head.columns),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()),
    ]
    if df.height > max_rows:
        lines.append(f"\n_{df.height - max_rows} more rows_")
    return "\n".join(lines)
