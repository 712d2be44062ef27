"""The simulated judge: oracle scores revealed by pool row, every lookup recorded."""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------------
# the oracle


class Oracle:
    """The simulated judge: oracle scores looked up by pool row, with every lookup recorded.

    ``reveal`` is the judge (used for selected pairs and baselines' reads); ``evaluation_scores``
    is the ground truth of held-out prompts for measuring accuracy, recorded separately.
    """

    def __init__(self, scores: np.ndarray):
        self._scores = np.asarray(scores, dtype=np.float64)
        self.revealed: list[np.ndarray] = []
        self.evaluated: list[np.ndarray] = []

    @property
    def n_revealed(self) -> int:
        return int(sum(len(r) for r in self.revealed))

    def revealed_rows(self) -> np.ndarray:
        return np.concatenate(self.revealed) if self.revealed else np.empty(0, dtype=np.int64)

    def evaluated_rows(self) -> np.ndarray:
        return np.concatenate(self.evaluated) if self.evaluated else np.empty(0, dtype=np.int64)

    def reveal(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        self.revealed.append(rows.copy())
        return self._scores[rows]

    def evaluation_scores(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        self.evaluated.append(rows.copy())
        return self._scores[rows]


def _judge(oracle: Oracle, a: np.ndarray, b: np.ndarray):
    """Reveal the pair's two scores: (chosen, rejected, their scores, tie flags)."""
    revealed = oracle.reveal(np.concatenate([a, b]))
    sa, sb = revealed[: len(a)], revealed[len(a) :]
    first = sa >= sb  # exact tie: the first-selected response is recorded as chosen
    c, r = np.where(first, a, b), np.where(first, b, a)
    s_c, s_r = np.where(first, sa, sb), np.where(first, sb, sa)
    return c, r, s_c, s_r, sa == sb
