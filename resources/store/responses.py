"""The store's responses: completions (each pool member's answer to a prompt) and their
feature vectors (fp16 blocks in .npy files under the home, indexed by completion and encoder).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from resources import home
from resources.store.base import StoreBase, StoreError, insert_rows


class ResponsesAndFeatures(StoreBase):
    """Completions and features."""

    # -- completions -------------------------------------------------------------------------

    def completion_ids_of_round(self, round_id: str) -> list[str]:
        """The ids of the round's completions, sorted."""
        return self._query(
            "SELECT completion_id FROM completions WHERE round_id = ? ORDER BY completion_id",
            [round_id],
        )["completion_id"].to_list()

    def completions_of_round(self, round_id: str) -> pl.DataFrame:
        """completion_id, prompt_id of the round's completions, by prompt then member."""
        return self._query(
            "SELECT completion_id, prompt_id FROM completions WHERE round_id = ? "
            "ORDER BY prompt_id, member",
            [round_id],
        )

    def completion_texts(
        self, completion_ids: Sequence[str], round_ids: Sequence[str]
    ) -> pl.DataFrame:
        """completion_id, prompt, response of `completion_ids` that belong to `round_ids`.

        The round filter spares a scan of every stored response (docs/scaling.md, section 2.2).
        """
        return self._query(
            "SELECT c.completion_id, p.prompt, c.response FROM completions c "
            "JOIN prompts p USING (prompt_id) "
            "WHERE c.round_id IN (SELECT unnest(CAST($rounds AS VARCHAR[]))) "
            "AND c.completion_id IN (SELECT unnest(CAST($ids AS VARCHAR[])))",
            {"ids": list(completion_ids), "rounds": list(round_ids)},
        )

    def round_completion_texts(self, round_id: str) -> pl.DataFrame:
        """completion_id, prompt, response of every completion of the round, by id."""
        return self._query(
            "SELECT c.completion_id, p.prompt, c.response FROM completions c "
            "JOIN prompts p USING (prompt_id) WHERE c.round_id = ? ORDER BY c.completion_id",
            [round_id],
        )

    def responses_to_prompts(self, prompt_ids: Sequence[str]) -> pl.DataFrame:
        """prompt_id, prompt, completion_id, response of every stored response to `prompt_ids`
        (whichever round wrote it), by prompt then completion."""
        return self._query(
            "SELECT c.prompt_id, p.prompt, c.completion_id, c.response FROM completions c "
            "JOIN prompts p USING (prompt_id) "
            "WHERE c.prompt_id IN (SELECT unnest(CAST($ids AS VARCHAR[]))) "
            "ORDER BY c.prompt_id, c.completion_id",
            {"ids": list(prompt_ids)},
        )

    def completion_counts(self, round_id: str) -> dict:
        """What the completions check reads: the round's prompts, members, responses, empty
        responses, responses read from a pool file, and prompts with fewer than two responses."""
        return self._query(
            "SELECT (SELECT count(*) FROM round_prompts WHERE round_id = $r) AS prompts, "
            "count(DISTINCT member) AS members, count(*) AS responses, "
            "count(*) FILTER (WHERE trim(response) = '') AS empty, "
            "count(*) FILTER (WHERE finish_reason = 'pool') AS from_pool, "
            "(SELECT count(*) FROM round_prompts r WHERE r.round_id = $r AND (SELECT count(*) "
            "FROM completions c WHERE c.round_id = $r AND c.prompt_id = r.prompt_id) < 2) "
            "AS short_prompts FROM completions WHERE round_id = $r",
            {"r": round_id},
        ).row(0, named=True)

    # -- features ----------------------------------------------------------------------------

    def missing_features(self, completion_ids: Sequence[str], encoder: str) -> list[str]:
        ids = pl.DataFrame(
            {"completion_id": list(completion_ids)}, schema={"completion_id": pl.String}
        )
        missing = self._with_frame(
            "wanted",
            ids,
            "SELECT w.completion_id FROM wanted w LEFT JOIN features f "
            "ON f.completion_id = w.completion_id AND f.encoder = ? "
            "WHERE f.completion_id IS NULL",
            [encoder],
        )
        return missing["completion_id"].to_list()

    def add_features(
        self, completion_ids: Sequence[str], encoder: str, vectors: np.ndarray
    ) -> Path:
        """Store feature vectors (as fp16 in one .npy file) and index them by completion."""
        if len(completion_ids) != len(vectors):
            raise StoreError(f"{len(completion_ids)} ids for {len(vectors)} feature vectors")
        folder = home.features_dir(self.root) / safe_name(encoder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uuid.uuid4().hex}.npy"
        # Written under a temporary name first: a crash leaves a .tmp file or an unindexed .npy,
        # both removed by `remove_orphan_files`, never a half-written file the index points to.
        tmp = path.with_suffix(".npy.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(vectors, dtype=np.float16))
        os.replace(tmp, path)
        index = pl.DataFrame(
            {
                "completion_id": list(completion_ids),
                "encoder": encoder,
                "file": str(path.relative_to(self.root)),
                "row_index": np.arange(len(completion_ids), dtype=np.int32),
                "dim": int(vectors.shape[1]),
            }
        )
        with self._transaction() as con:
            insert_rows(con, "features", index, "replace")
        return path

    def load_features(self, completion_ids: Sequence[str], encoder: str) -> np.ndarray:
        """Feature matrix [len(ids), dim] (float32) in the order of `completion_ids`."""
        wanted = pl.DataFrame(
            {"completion_id": list(completion_ids), "wanted_order": np.arange(len(completion_ids))},
            schema={"completion_id": pl.String, "wanted_order": pl.Int64},
        )
        index = self._with_frame(
            "wanted",
            wanted,
            "SELECT w.wanted_order, f.file, f.row_index, f.dim FROM wanted w "
            "LEFT JOIN features f ON f.completion_id = w.completion_id AND f.encoder = ? "
            "ORDER BY w.wanted_order",
            [encoder],
        )
        if index["file"].null_count():
            missing = wanted["completion_id"].filter(index["file"].is_null()).to_list()
            raise StoreError(f"no {encoder} features for {len(missing)} completions: {missing[:3]}")
        dims = index["dim"].unique()
        if len(dims) != 1:
            raise StoreError(f"{encoder} features have mixed dimensions {dims.to_list()}")
        out = np.empty((index.height, int(dims[0])), dtype=np.float32)
        for (file,), group in index.group_by(["file"]):
            block = np.load(self.root / file, mmap_mode="r")
            out[group["wanted_order"].to_numpy()] = block[group["row_index"].to_numpy()]
        return out

    def feature_dim(self, round_id: str, encoder: str) -> int | None:
        """The size of the round's `encoder` feature vectors (None: none stored)."""
        dim = self._scalar(
            "SELECT f.dim FROM features f JOIN completions c USING (completion_id) "
            "WHERE c.round_id = ? AND f.encoder = ? LIMIT 1",
            [round_id, encoder],
        )
        return None if dim is None else int(dim)


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
