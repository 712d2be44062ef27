"""The DuckDB store: every table of the pipeline, and the only place that writes SQL.

Writes are idempotent per round partition: `replace_round` deletes a round's rows and inserts the
new ones in one transaction, so re-materialising a partition replaces it and never duplicates
rows, and a failure half-way leaves the previous rows in place.

DuckDB lets one process hold the file at a time, so every operation opens a short-lived
connection and retries while another process (a run, the sensor daemon) holds the lock.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl
from pydantic import Field

from resources import home

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id VARCHAR PRIMARY KEY,
    prompt VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    origin VARCHAR,
    ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS rounds (
    round_id VARCHAR PRIMARY KEY,
    round_index INTEGER NOT NULL,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS round_prompts (
    round_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (round_id, prompt_id)
);
CREATE TABLE IF NOT EXISTS completions (
    completion_id VARCHAR PRIMARY KEY,
    round_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    principle VARCHAR,
    system_prompt VARCHAR,
    response VARCHAR NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    finish_reason VARCHAR,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS features (
    completion_id VARCHAR NOT NULL,
    encoder VARCHAR NOT NULL,
    file VARCHAR NOT NULL,
    row_index INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    PRIMARY KEY (completion_id, encoder)
);
CREATE TABLE IF NOT EXISTS reward_scores (
    round_id VARCHAR NOT NULL,
    completion_id VARCHAR PRIMARY KEY,
    prompt_id VARCHAR NOT NULL,
    reward_model_round VARCHAR,
    mu DOUBLE NOT NULL,
    sigma DOUBLE NOT NULL,
    lower DOUBLE NOT NULL,
    upper DOUBLE NOT NULL,
    beta DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    pair_id VARCHAR PRIMARY KEY,
    round_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    completion_a VARCHAR NOT NULL,
    completion_b VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    beta DOUBLE,
    seed BIGINT,
    mu_a DOUBLE,
    mu_b DOUBLE,
    sigma_a DOUBLE,
    sigma_b DOUBLE,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS judge_scores (
    round_id VARCHAR NOT NULL,
    completion_id VARCHAR NOT NULL,
    aspect VARCHAR NOT NULL,
    judge VARCHAR NOT NULL,
    score DOUBLE,
    failed BOOLEAN NOT NULL,
    reason VARCHAR,
    digit_mass DOUBLE,
    attempts INTEGER,
    PRIMARY KEY (completion_id, aspect, judge)
);
CREATE TABLE IF NOT EXISTS judgements (
    pair_id VARCHAR PRIMARY KEY,
    round_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    score_a DOUBLE,
    score_b DOUBLE,
    preference VARCHAR NOT NULL,
    chosen_completion_id VARCHAR,
    rejected_completion_id VARCHAR,
    labeller VARCHAR NOT NULL,
    labelled_at TIMESTAMP
);
-- Added with human labelling: on an older file these add the columns, elsewhere they do nothing.
ALTER TABLE judgements ADD COLUMN IF NOT EXISTS source VARCHAR;
ALTER TABLE judgements ADD COLUMN IF NOT EXISTS n_labels INTEGER;
ALTER TABLE judgements ADD COLUMN IF NOT EXISTS votes VARCHAR;
ALTER TABLE judgements ADD COLUMN IF NOT EXISTS raw_choices VARCHAR;
-- Which response of a pair was shown as "A" to people. Written once per pair and never changed,
-- so choices in files already handed out always map back the same way.
CREATE TABLE IF NOT EXISTS presentations (
    pair_id VARCHAR PRIMARY KEY,
    round_id VARCHAR NOT NULL,
    shown_as_a VARCHAR NOT NULL,
    shown_as_b VARCHAR NOT NULL,
    swapped BOOLEAN NOT NULL,
    seed BIGINT,
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS annotation_batches (
    round_id VARCHAR PRIMARY KEY,
    pairs INTEGER NOT NULL,
    jsonl_path VARCHAR,
    csv_path VARCHAR,
    labelstudio_path VARCHAR,
    written_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP
);
-- Every human label ever imported; never replaced or deleted. label_id is a hash of
-- (pair, voter, file content, location in the file): importing a file again adds nothing.
CREATE TABLE IF NOT EXISTS labels (
    label_id VARCHAR PRIMARY KEY,
    pair_id VARCHAR NOT NULL,
    round_id VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    labeller VARCHAR NOT NULL,
    annotator VARCHAR,
    raw_choice VARCHAR NOT NULL,
    shown_as_a VARCHAR NOT NULL,
    choice VARCHAR NOT NULL,
    comment VARCHAR,
    file VARCHAR NOT NULL,
    file_sha256 VARCHAR NOT NULL,
    line INTEGER NOT NULL,
    location VARCHAR NOT NULL,
    labelled_at TIMESTAMP NOT NULL,
    imported_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS imported_files (
    file_sha256 VARCHAR PRIMARY KEY,
    file VARCHAR NOT NULL,
    format VARCHAR,
    status VARCHAR NOT NULL,
    records INTEGER,
    labels INTEGER,
    new_labels INTEGER,
    skipped_records INTEGER,
    repeated_records INTEGER,
    rounds VARCHAR,
    reason VARCHAR,
    imported_at TIMESTAMP NOT NULL
);
-- Sampling settings of the pool member that wrote a response (JSON; null for pool files).
ALTER TABLE completions ADD COLUMN IF NOT EXISTS sampling VARCHAR;
-- Released dataset versions (one row per version name, replaced when rebuilt) and every push.
CREATE TABLE IF NOT EXISTS dataset_releases (
    version VARCHAR PRIMARY KEY,
    path VARCHAR NOT NULL,
    rounds VARCHAR NOT NULL,
    manifest_sha256 VARCHAR NOT NULL,
    pairs INTEGER NOT NULL,
    card_repo_id VARCHAR,
    built_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS hub_pushes (
    push_id VARCHAR PRIMARY KEY,
    version VARCHAR NOT NULL,
    manifest_sha256 VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,
    repo_id VARCHAR NOT NULL,
    revision VARCHAR NOT NULL,
    commit_oid VARCHAR NOT NULL,
    new_commit BOOLEAN NOT NULL,
    tag VARCHAR,
    url VARCHAR,
    pushed_at TIMESTAMP NOT NULL
);
-- Downstream checkpoints (LoRA adapters trained with TRL) and their evaluations, per round.
CREATE TABLE IF NOT EXISTS trained_checkpoints (
    kind VARCHAR NOT NULL,
    round_id VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    base_model VARCHAR NOT NULL,
    loss VARCHAR,
    rows INTEGER NOT NULL,
    rounds VARCHAR NOT NULL,
    data_sha256 VARCHAR NOT NULL,
    settings VARCHAR NOT NULL,
    steps INTEGER,
    train_seconds DOUBLE,
    code_version VARCHAR,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (kind, round_id)
);
CREATE TABLE IF NOT EXISTS checkpoint_evals (
    round_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE,
    n INTEGER,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (round_id, kind, metric)
);
CREATE TABLE IF NOT EXISTS reward_models (
    round_id VARCHAR PRIMARY KEY,
    path VARCHAR NOT NULL,
    encoder VARCHAR NOT NULL,
    pairs_trained INTEGER NOT NULL,
    prompts_done INTEGER NOT NULL,
    loss_before DOUBLE,
    loss_after DOUBLE,
    created_at TIMESTAMP
);
"""

# Tables whose rows belong to one round partition (the unit of idempotent replacement).
ROUND_TABLES = (
    "round_prompts",
    "completions",
    "reward_scores",
    "pairs",
    "judge_scores",
    "judgements",
    "reward_models",
    "annotation_batches",
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class StoreError(RuntimeError):
    """A store operation that cannot go ahead; nothing was written."""


class DuckDBStore(dg.ConfigurableResource):
    """All tables of the pipeline in one DuckDB file (default: `$AUF_HOME/auf.duckdb`)."""

    path: str = Field(default="", description="DuckDB file; empty means $AUF_HOME/auf.duckdb")
    lock_timeout_s: float = Field(
        default=120.0, description="How long to wait for another process holding the file"
    )

    @property
    def database(self) -> Path:
        return Path(self.path) if self.path else home.database_path()

    @property
    def root(self) -> Path:
        """The directory next to the database that holds feature and checkpoint files."""
        return self.database.parent

    # -- connections -------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.database.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.database))
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            con.execute(SCHEMA)
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: Sequence | Mapping | None = None) -> pl.DataFrame:
        with self.connect() as con:
            return con.execute(sql, params or []).pl()

    def scalar(self, sql: str, params: Sequence | None = None):
        with self.connect() as con:
            row = con.execute(sql, params or []).fetchone()
        return None if row is None else row[0]

    # -- generic partition writes ------------------------------------------------------------

    def replace_round(self, table: str, round_id: str, rows: pl.DataFrame) -> int:
        """Replace every row of `round_id` in `table` by `rows`, atomically."""
        self.replace_round_tables(round_id, {table: rows})
        return rows.height

    def replace_round_tables(self, round_id: str, tables: Mapping[str, pl.DataFrame]) -> None:
        """Replace the rows of `round_id` in several tables in a single transaction."""
        for table, rows in tables.items():
            if table not in ROUND_TABLES:
                raise StoreError(f"{table!r} is not a per-round table ({', '.join(ROUND_TABLES)})")
            if rows.height and "round_id" in rows.columns:
                other = rows.filter(pl.col("round_id") != round_id)
                if other.height:
                    raise StoreError(
                        f"rows for {table} of {round_id} carry other round ids: "
                        f"{sorted(set(other['round_id']))[:3]}"
                    )
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                for table, rows in tables.items():
                    con.execute(f"DELETE FROM {table} WHERE round_id = ?", [round_id])
                    if rows.height:
                        con.register("incoming", rows.to_arrow())
                        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
                        con.unregister("incoming")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise

    def round_rows(self, table: str, round_id: str) -> pl.DataFrame:
        if table not in ROUND_TABLES:
            raise StoreError(f"{table!r} is not a per-round table")
        return self.query(f"SELECT * FROM {table} WHERE round_id = ?", [round_id])

    def count_rows(self, table: str, round_id: str | None = None) -> int:
        if round_id is None:
            return int(self.scalar(f"SELECT count(*) FROM {table}"))
        return int(self.scalar(f"SELECT count(*) FROM {table} WHERE round_id = ?", [round_id]))

    # -- prompts and rounds ------------------------------------------------------------------

    def add_prompts(self, prompts: pl.DataFrame, origin: str) -> dict[str, int]:
        """Insert prompts whose id is new; an id already stored keeps its text.

        Returns counts of new and already-known prompts, and of ids stored with another text
        (reported, never overwritten: pairs and labels may already refer to them).
        """
        rows = prompts.select("prompt_id", "prompt", "source").with_columns(
            origin=pl.lit(origin), ingested_at=pl.lit(utcnow())
        )
        with self.connect() as con:
            con.register("incoming", rows.to_arrow())
            conflicts = con.execute(
                "SELECT count(*) FROM incoming i JOIN prompts p USING (prompt_id) "
                "WHERE p.prompt <> i.prompt"
            ).fetchone()[0]
            known = con.execute(
                "SELECT count(*) FROM incoming i JOIN prompts p USING (prompt_id)"
            ).fetchone()[0]
            con.execute("INSERT OR IGNORE INTO prompts BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
        return {"new": rows.height - known, "known": known - conflicts, "conflicting": conflicts}

    def register_round(self, round_id: str, round_index: int) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT OR IGNORE INTO rounds VALUES (?, ?, ?)", [round_id, round_index, utcnow()]
            )

    def available_prompts(self, round_id: str) -> pl.DataFrame:
        """Prompts not used by any round other than `round_id`, in a stable order."""
        return self.query(
            "SELECT p.prompt_id, p.prompt, p.source FROM prompts p "
            "WHERE p.prompt_id NOT IN "
            "(SELECT prompt_id FROM round_prompts WHERE round_id <> ?) "
            "ORDER BY p.ingested_at, p.prompt_id",
            [round_id],
        )

    def prompts_of_round(self, round_id: str) -> pl.DataFrame:
        return self.query(
            "SELECT r.prompt_id, p.prompt, p.source FROM round_prompts r "
            "JOIN prompts p USING (prompt_id) WHERE r.round_id = ? ORDER BY r.position",
            [round_id],
        )

    def prompts_done_before(self, round_id: str) -> int:
        """Prompts labelled in rounds ordered before `round_id` (drives the anchor schedule)."""
        return int(
            self.scalar(
                "SELECT count(DISTINCT prompt_id) FROM judgements WHERE round_id < ?", [round_id]
            )
        )

    def unused_prompt_count(self) -> int:
        """Prompts that no round has taken yet (0: the pool is used up, or nothing ingested)."""
        return int(
            self.scalar(
                "SELECT count(*) FROM prompts WHERE prompt_id NOT IN "
                "(SELECT prompt_id FROM round_prompts)"
            )
        )

    # -- human labelling ---------------------------------------------------------------------

    def add_presentations(self, rows: pl.DataFrame) -> int:
        """Record how pairs are shown (A/B); a pair shown before keeps its first presentation."""
        if rows.height == 0:
            return 0
        with self.connect() as con:
            con.register("incoming", rows.to_arrow())
            before = con.execute("SELECT count(*) FROM presentations").fetchone()[0]
            con.execute("INSERT OR IGNORE INTO presentations BY NAME SELECT * FROM incoming")
            after = con.execute("SELECT count(*) FROM presentations").fetchone()[0]
            con.unregister("incoming")
        return after - before

    def pair_infos(self, pair_ids: Sequence[str]) -> pl.DataFrame:
        """pair_id, round_id, completion_a, completion_b, shown_as_a (null: never sent out)."""
        wanted = pl.DataFrame(
            {"pair_id": list(dict.fromkeys(pair_ids))}, schema={"pair_id": pl.String}
        )
        with self.connect() as con:
            con.register("wanted", wanted.to_arrow())
            out = con.execute(
                "SELECT p.pair_id, p.round_id, p.completion_a, p.completion_b, s.shown_as_a "
                "FROM wanted w JOIN pairs p USING (pair_id) "
                "LEFT JOIN presentations s USING (pair_id)"
            ).pl()
            con.unregister("wanted")
        return out

    def imported_file(self, file_sha256: str) -> dict | None:
        rows = self.query("SELECT * FROM imported_files WHERE file_sha256 = ?", [file_sha256])
        return rows.row(0, named=True) if rows.height else None

    def record_label_file(self, file_row: Mapping, labels: pl.DataFrame) -> int:
        """Add a file's labels and mark the file imported, in one transaction.

        Labels already stored (same label_id) are left as they are. Returns how many were new.
        """
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                before = con.execute("SELECT count(*) FROM labels").fetchone()[0]
                if labels.height:
                    con.register("incoming", labels.to_arrow())
                    con.execute("INSERT OR IGNORE INTO labels BY NAME SELECT * FROM incoming")
                    con.unregister("incoming")
                new = con.execute("SELECT count(*) FROM labels").fetchone()[0] - before
                row = {**file_row, "status": "imported", "new_labels": new}
                con.execute(
                    "DELETE FROM imported_files WHERE file_sha256 = ?", [row["file_sha256"]]
                )
                con.register("incoming_file", pl.DataFrame([row]).to_arrow())
                con.execute("INSERT INTO imported_files BY NAME SELECT * FROM incoming_file")
                con.unregister("incoming_file")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        return new

    def record_rejected_file(self, file_row: Mapping) -> None:
        """Remember a quarantined file (a file already imported keeps that status)."""
        row = {**file_row, "status": "quarantined", "new_labels": 0}
        with self.connect() as con:
            con.register("incoming_file", pl.DataFrame([row]).to_arrow())
            con.execute(
                "DELETE FROM imported_files WHERE file_sha256 = ? AND status <> 'imported'",
                [row["file_sha256"]],
            )
            con.execute("INSERT OR IGNORE INTO imported_files BY NAME SELECT * FROM incoming_file")
            con.unregister("incoming_file")

    def labels_of_round(self, round_id: str) -> pl.DataFrame:
        return self.query(
            "SELECT * FROM labels WHERE round_id = ? ORDER BY labelled_at, imported_at, file, line",
            [round_id],
        )

    def label_progress(self) -> pl.DataFrame:
        """Per round with an annotation batch or labels: pairs, labelled pairs, labels, state."""
        return self.query(
            "WITH r AS (SELECT round_id FROM annotation_batches UNION "
            "SELECT DISTINCT round_id FROM labels) "
            "SELECT r.round_id, "
            "(SELECT count(*) FROM pairs p WHERE p.round_id = r.round_id) AS pairs, "
            "(SELECT count(DISTINCT l.pair_id) FROM labels l JOIN pairs p USING (pair_id) "
            " WHERE l.round_id = r.round_id) AS labelled_pairs, "
            "(SELECT count(*) FROM labels l WHERE l.round_id = r.round_id) AS labels, "
            "b.written_at, b.jsonl_path, b.csv_path, b.labelstudio_path, "
            "m.created_at AS trained_at "
            "FROM r LEFT JOIN annotation_batches b USING (round_id) "
            "LEFT JOIN reward_models m USING (round_id) ORDER BY r.round_id"
        )

    # -- releases ----------------------------------------------------------------------------

    def rounds_with_judgements(self) -> list[str]:
        """Rounds that have verdicts, in round order (by index, not by name)."""
        rows = self.query(
            "SELECT DISTINCT j.round_id, r.round_index FROM judgements j "
            "LEFT JOIN rounds r USING (round_id) ORDER BY r.round_index NULLS LAST, j.round_id"
        )
        return rows["round_id"].to_list()

    def release_pairs(self, round_ids: Sequence[str]) -> pl.DataFrame:
        """Every verdict of `round_ids` with its pair, prompt, both responses and their scores.

        `a` and `b` are the pair's responses as selected (not chosen/rejected: ties, failed and
        unlabelled pairs are in here too, so they can be counted).
        """
        return self._with_rounds(
            round_ids,
            "SELECT j.pair_id, j.round_id, r.round_index, j.prompt_id, q.prompt, q.source, "
            "q.origin AS prompt_origin, j.preference, j.score_a, j.score_b, j.labeller, "
            "j.source AS label_source, j.n_labels, j.labelled_at, "
            "p.method, p.beta, p.seed, p.completion_a, p.completion_b, "
            "ca.member AS member_a, ca.model AS model_a, ca.sampling AS sampling_a, "
            "ca.principle AS principle_a, ca.response AS response_a, "
            "cb.member AS member_b, cb.model AS model_b, cb.sampling AS sampling_b, "
            "cb.principle AS principle_b, cb.response AS response_b, "
            "sa.mu AS mu_a, sa.sigma AS sigma_a, sb.mu AS mu_b, sb.sigma AS sigma_b, "
            "sa.reward_model_round "
            "FROM judgements j JOIN wanted w USING (round_id) "
            "JOIN rounds r USING (round_id) JOIN pairs p USING (pair_id) "
            "JOIN prompts q ON q.prompt_id = j.prompt_id "
            "JOIN completions ca ON ca.completion_id = p.completion_a "
            "JOIN completions cb ON cb.completion_id = p.completion_b "
            "LEFT JOIN reward_scores sa ON sa.completion_id = p.completion_a "
            "LEFT JOIN reward_scores sb ON sb.completion_id = p.completion_b "
            "ORDER BY r.round_index, j.prompt_id, j.pair_id",
        )

    def release_completions(self, round_ids: Sequence[str]) -> pl.DataFrame:
        """Every response of `round_ids` with its prompt and uncertainty scores."""
        return self._with_rounds(
            round_ids,
            "SELECT c.round_id, r.round_index, c.prompt_id, q.prompt, q.source, c.completion_id, "
            "c.member, c.model, c.sampling, c.principle, c.system_prompt, c.response, "
            "c.completion_tokens, s.mu, s.sigma "
            "FROM completions c JOIN wanted w USING (round_id) JOIN rounds r USING (round_id) "
            "JOIN prompts q ON q.prompt_id = c.prompt_id "
            "LEFT JOIN reward_scores s ON s.completion_id = c.completion_id "
            "ORDER BY r.round_index, c.prompt_id, c.member, c.completion_id",
        )

    def release_judge_scores(self, round_ids: Sequence[str]) -> pl.DataFrame:
        """Per-response judge scores (one row per aspect) of `round_ids`."""
        return self._with_rounds(
            round_ids,
            "SELECT s.round_id, s.completion_id, s.aspect, s.judge, s.score, s.failed "
            "FROM judge_scores s JOIN wanted w USING (round_id) "
            "ORDER BY s.completion_id, s.aspect, s.judge",
        )

    def release_reward_models(self, round_ids: Sequence[str]) -> pl.DataFrame:
        return self._with_rounds(
            round_ids,
            "SELECT m.round_id, r.round_index, m.encoder, m.pairs_trained, m.prompts_done, "
            "m.loss_before, m.loss_after FROM reward_models m JOIN wanted w USING (round_id) "
            "JOIN rounds r USING (round_id) ORDER BY r.round_index",
        )

    def _with_rounds(self, round_ids: Sequence[str], sql: str) -> pl.DataFrame:
        wanted = pl.DataFrame({"round_id": list(round_ids)}, schema={"round_id": pl.String})
        with self.connect() as con:
            con.register("wanted", wanted.to_arrow())
            out = con.execute(sql).pl()
            con.unregister("wanted")
        return out

    def record_release(self, row: Mapping) -> None:
        """Remember a built dataset version (a rebuilt version replaces its row)."""
        self._replace_where(
            "dataset_releases", "version = ?", [row["version"]], pl.DataFrame([dict(row)])
        )

    def latest_release(self) -> dict | None:
        rows = self.query("SELECT * FROM dataset_releases ORDER BY built_at DESC LIMIT 1")
        return rows.row(0, named=True) if rows.height else None

    def record_push(self, row: Mapping) -> None:
        with self.connect() as con:
            con.register("incoming", pl.DataFrame([dict(row)]).to_arrow())
            con.execute("INSERT INTO hub_pushes BY NAME SELECT * FROM incoming")
            con.unregister("incoming")

    # -- downstream checkpoints --------------------------------------------------------------

    def record_checkpoint(self, row: Mapping) -> None:
        """Register a trained checkpoint (a re-trained round replaces its row)."""
        self._replace_where(
            "trained_checkpoints",
            "kind = ? AND round_id = ?",
            [row["kind"], row["round_id"]],
            pl.DataFrame([dict(row)]),
        )

    def checkpoint(self, kind: str, round_id: str) -> dict | None:
        rows = self.query(
            "SELECT * FROM trained_checkpoints WHERE kind = ? AND round_id = ?", [kind, round_id]
        )
        return rows.row(0, named=True) if rows.height else None

    def record_evals(self, round_id: str, kind: str, rows: pl.DataFrame) -> None:
        """Replace the evaluation metrics of one (round, checkpoint kind)."""
        self._replace_where("checkpoint_evals", "round_id = ? AND kind = ?", [round_id, kind], rows)

    def evals(self) -> pl.DataFrame:
        return self.query(
            "SELECT e.*, r.round_index FROM checkpoint_evals e LEFT JOIN rounds r "
            "USING (round_id) ORDER BY r.round_index, e.kind, e.metric"
        )

    def _replace_where(self, table: str, where: str, params: list, rows: pl.DataFrame) -> None:
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"DELETE FROM {table} WHERE {where}", params)
                if rows.height:
                    con.register("incoming", rows.to_arrow())
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
                    con.unregister("incoming")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise

    # -- features ----------------------------------------------------------------------------

    def missing_features(self, completion_ids: Sequence[str], encoder: str) -> list[str]:
        ids = pl.DataFrame({"completion_id": list(completion_ids)})
        with self.connect() as con:
            con.register("wanted", ids.to_arrow())
            missing = con.execute(
                "SELECT w.completion_id FROM wanted w LEFT JOIN features f "
                "ON f.completion_id = w.completion_id AND f.encoder = ? "
                "WHERE f.completion_id IS NULL",
                [encoder],
            ).fetchall()
            con.unregister("wanted")
        return [row[0] for row in missing]

    def add_features(
        self, completion_ids: Sequence[str], encoder: str, vectors: np.ndarray
    ) -> Path:
        """Store feature vectors (as fp16 in one .npy file) and index them by completion."""
        if len(completion_ids) != len(vectors):
            raise StoreError(f"{len(completion_ids)} ids for {len(vectors)} feature vectors")
        folder = home.features_dir(self.root) / _safe_name(encoder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uuid.uuid4().hex}.npy"
        np.save(path, np.asarray(vectors, dtype=np.float16))
        index = pl.DataFrame(
            {
                "completion_id": list(completion_ids),
                "encoder": encoder,
                "file": str(path.relative_to(self.root)),
                "row_index": np.arange(len(completion_ids), dtype=np.int32),
                "dim": int(vectors.shape[1]),
            }
        )
        with self.connect() as con:
            con.register("incoming", index.to_arrow())
            con.execute("INSERT OR REPLACE INTO features BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
        return path

    def load_features(self, completion_ids: Sequence[str], encoder: str) -> np.ndarray:
        """Feature matrix [len(ids), dim] (float32) in the order of `completion_ids`."""
        wanted = pl.DataFrame(
            {"completion_id": list(completion_ids), "order": np.arange(len(completion_ids))}
        )
        with self.connect() as con:
            con.register("wanted", wanted.to_arrow())
            index = con.execute(
                "SELECT w.order, f.file, f.row_index, f.dim FROM wanted w "
                "LEFT JOIN features f ON f.completion_id = w.completion_id AND f.encoder = ? "
                "ORDER BY w.order",
                [encoder],
            ).pl()
            con.unregister("wanted")
        if index["file"].null_count():
            missing = wanted["completion_id"].filter(index["file"].is_null()).to_list()
            raise StoreError(f"no {encoder} features for {len(missing)} completions: {missing[:3]}")
        dims = index["dim"].unique()
        if len(dims) != 1:
            raise StoreError(f"{encoder} features have mixed dimensions {dims.to_list()}")
        out = np.empty((index.height, int(dims[0])), dtype=np.float32)
        for (file,), group in index.group_by(["file"]):
            block = np.load(self.root / file, mmap_mode="r")
            out[group["order"].to_numpy()] = block[group["row_index"].to_numpy()]
        return out


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
