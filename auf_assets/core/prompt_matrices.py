"""Per-response rows laid out per prompt: the padded [prompts, responses] matrices that the
selection rules (reward model and policy alike) work on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl


def by_prompt_matrices(
    rows: pl.DataFrame, columns: Sequence[str], fill: Sequence[float] | None = None
) -> tuple[list[str], list[list[str]], list[np.ndarray], np.ndarray]:
    """Per-response values as padded [P, N] matrices, one per column (``fill`` pads them; 0 by
    default), with the prompt ids, each prompt's completion ids and the mask of real entries."""
    grouped = (
        rows.sort("prompt_id", "completion_id")
        .group_by("prompt_id", maintain_order=True)
        .agg("completion_id", *columns)
    )
    width = int(grouped["completion_id"].list.len().max())
    shape = (grouped.height, width)
    mask = np.zeros(shape, dtype=bool)
    out = [np.full(shape, f, dtype=np.float64) for f in (fill or [0.0] * len(columns))]
    for row, ids in enumerate(grouped["completion_id"]):
        mask[row, : len(ids)] = True
        for matrix, column in zip(out, columns, strict=True):
            matrix[row, : len(ids)] = grouped[column][row].to_numpy()
    ids = [list(i) for i in grouped["completion_id"]]
    return grouped["prompt_id"].to_list(), ids, out, mask


def random_pair_gap(mu: np.ndarray, mask: np.ndarray) -> float:
    """Mean |mu_i - mu_j| of a pair drawn at random per prompt: the baseline of the selection."""
    gaps = []
    for row, keep in zip(mu, mask, strict=True):
        m = row[keep]
        if len(m) > 1:
            diff = np.abs(m[:, None] - m[None, :])
            gaps.append(diff.sum() / (len(m) * (len(m) - 1)))
    return float(np.mean(gaps)) if gaps else 0.0
