"""Features for every response of a simulation pool, computed once and cached on disk.

An encoder setting is a ``+``-joined list of blocks, each one of:

* ``minilm`` (alias of the packaged ``all-minilm-l6-v2``), any packaged encoder name, or a local
  transformers directory: pooled hidden states via :class:`resources.encoder.FeatureEncoder`
  (``pooling`` mean or last-token, ``max_length``, ``dtype`` bf16 by default: about twice as fast as
  fp32 on CPUs with AVX512-BF16);
* ``text-stats``: the cheap statistics of :mod:`auf_assets.core.text_features` (no model).

e.g. ``minilm``, ``text-stats`` or ``minilm+text-stats`` (the blocks are concatenated).

Cache: every block is stored once per (pool content hash, block key) as an fp16 ``.npy`` under
``$AUF_HOME/features/pools/`` (:func:`resources.home.features_dir`), listed in ``index.json`` there,
and memory-mapped on later loads, so rounds, runs and bench workers share one copy. The pool hash
covers the validated rows' ids and texts in order (:meth:`SimPool.content_hash`), so any change to
the responses makes a new entry. The raw encoder outputs are cached; the per-block scaling applied
on load (:func:`auf_assets.core.features.scale_block`, the same the pipeline's encoder applies) is
cheap and not cached.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from auf_assets.core.features import (
    ENCODER_ALIASES,
    EncoderBlock,
    parse_encoder,
    scale_block,
)
from auf_assets.core.settings import RoundSettings
from auf_assets.core.simulation import SimPool
from auf_assets.core.text_features import text_statistics

__all__ = [
    "ENCODER_ALIASES",
    "EncoderBlock",
    "PoolFeatures",
    "cache_dir",
    "parse_encoder",
    "pool_features",
]

INDEX_FILE = "index.json"
_DEFAULT_ENCODER = RoundSettings().encoder  # the default preset's, as in a real round

Log = Callable[[str], None]


def cache_dir(root: Path | None = None) -> Path:
    """``$AUF_HOME/features/pools`` (or ``<root>/features/pools``)."""
    from resources import home

    return home.features_dir(root) / "pools"


@dataclass
class PoolFeatures:
    """The feature matrix of a pool (rows = the validated pool's ``feature_row``) and provenance."""

    matrix: np.ndarray
    key: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def computed_seconds(self) -> float:
        """Seconds spent encoding in this call (0 when everything came from the cache)."""
        return float(sum(b["seconds"] for b in self.blocks if b["computed"]))


def _read_index(folder: Path) -> list[dict[str, Any]]:
    path = folder / INDEX_FILE
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("entries", []))
    except (OSError, ValueError):
        return []  # a damaged index only costs a recompute


def _write_index(folder: Path, entries: list[dict[str, Any]]) -> None:
    tmp = folder / f".{INDEX_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"entries": entries}, indent=1))
    os.replace(tmp, folder / INDEX_FILE)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _encode_block(block: EncoderBlock, pool: SimPool, device: str, batch_size: int, log: Log):
    prompts = pool.frame["prompt"].to_list()
    responses = pool.frame["response"].to_list()
    if block.is_text_stats:
        return text_statistics(prompts, responses)
    from resources.encoder import FeatureEncoder

    encoder = FeatureEncoder(
        encoder=block.name,
        pooling=block.pooling,
        max_length=block.max_length,
        batch_size=batch_size,
        device=device,
        dtype=block.dtype,
    )
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 30.0:
            last[0] = now
            log(f"  {block.key}: {done}/{total} responses encoded")

    return encoder.backbone_features(prompts, responses, progress=progress)


def pool_features(
    pool: SimPool,
    encoder: str = _DEFAULT_ENCODER,
    *,
    pooling: str = EncoderBlock.pooling,
    max_length: int = EncoderBlock.max_length,
    dtype: str = EncoderBlock.dtype,
    batch_size: int = 32,
    device: str = "auto",
    root: Path | None = None,
    allow_compute: bool = True,
    log: Log | None = None,
) -> PoolFeatures:
    """Features of every response of ``pool`` (a validated, unsampled pool), from the cache or
    computed and cached now.

    ``allow_compute=False`` raises ``LookupError`` instead of encoding (bench workers use it: the
    parent process fills the cache first). ``root`` overrides ``$AUF_HOME``.
    """
    log = log or (lambda msg: None)
    blocks = parse_encoder(encoder, pooling=pooling, max_length=max_length, dtype=dtype)
    folder = cache_dir(root)
    pool_hash = pool.content_hash()
    n_rows = int(pool.feature_rows.max()) + 1
    if n_rows != pool.n_responses:
        raise ValueError("pool_features needs the full validated pool, not a sub-sample")
    parts: list[np.ndarray] = []
    info: list[dict[str, Any]] = []
    for block in blocks:
        entries = _read_index(folder)
        hit = next(
            (
                e
                for e in entries
                if e.get("pool_hash") == pool_hash
                and e.get("encoder") == block.key
                and (folder / e.get("file", "")).is_file()
            ),
            None,
        )
        if hit is not None:
            raw = np.load(folder / hit["file"], mmap_mode="r")
            if raw.shape[0] != n_rows:
                hit = None  # stale entry: recompute
        if hit is None:
            if not allow_compute:
                raise LookupError(
                    f"no cached {block.key} features for pool {pool.name} ({pool_hash[:12]}) "
                    f"under {folder}"
                )
            log(f"encoding {n_rows} responses with {block.key} (cached under {folder})")
            t0 = time.perf_counter()
            vectors = _encode_block(block, pool, device, batch_size, log)
            seconds = time.perf_counter() - t0
            folder.mkdir(parents=True, exist_ok=True)
            fname = f"{pool_hash[:16]}__{_safe(block.key)}.npy"
            tmp = folder / f".{fname}.{os.getpid()}.tmp.npy"
            np.save(tmp, np.asarray(vectors, dtype=np.float16))
            os.replace(tmp, folder / fname)
            entries = [
                e
                for e in _read_index(folder)
                if not (e.get("pool_hash") == pool_hash and e.get("encoder") == block.key)
            ]
            entries.append(
                {
                    "pool_hash": pool_hash,
                    "encoder": block.key,
                    "file": fname,
                    "rows": n_rows,
                    "dim": int(vectors.shape[1]),
                    "seconds": round(seconds, 2),
                    "pool": pool.name,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )
            _write_index(folder, entries)
            log(f"  {block.key}: {n_rows} responses in {seconds:.1f}s")
            raw = np.load(folder / fname, mmap_mode="r")
            info.append(
                {
                    "key": block.key,
                    "file": str(folder / fname),
                    "dim": int(raw.shape[1]),
                    "computed": True,
                    "seconds": round(seconds, 2),
                }
            )
        else:
            info.append(
                {
                    "key": block.key,
                    "file": str(folder / hit["file"]),
                    "dim": int(raw.shape[1]),
                    "computed": False,
                    "seconds": float(hit.get("seconds", 0.0)),
                }
            )
        parts.append(raw)
    matrix = np.concatenate([scale_block(b, p) for b, p in zip(blocks, parts, strict=True)], axis=1)
    return PoolFeatures(matrix, "+".join(b.key for b in blocks), info)
