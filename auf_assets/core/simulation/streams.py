"""The independent random streams of a simulated run, derived from the run's seed: one per use,
so that each draw stays the same whatever else the run does.
"""

from __future__ import annotations

_STREAM_SAMPLE, _STREAM_SPLIT, _STREAM_SELECT, _STREAM_PROTOCOL = 11, 12, 13, 14
_EVAL_SEED_OFFSET = 1_000_003
