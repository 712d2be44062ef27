"""The DuckDB store: every table of the pipeline, and the only place that writes SQL.

Writes are idempotent per round partition: `replace_round` deletes a round's rows and inserts the
new ones in one transaction, so re-materialising a partition replaces it and never duplicates
rows, and a failure half-way leaves the previous rows in place.

DuckDB lets one process hold the file at a time, so every operation opens a short-lived
connection and retries while another process (a run, the sensor daemon) holds the lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
    lower DOUBLE,
    upper DOUBLE,
    beta DOUBLE
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
-- The round chain's lineage: which checkpoint a round's scores and training started from, and
-- which judgements its replay buffer held (a hash), so a changed earlier round shows as stale.
ALTER TABLE reward_models ADD COLUMN IF NOT EXISTS base_round VARCHAR;
ALTER TABLE reward_models ADD COLUMN IF NOT EXISTS base_path VARCHAR;
ALTER TABLE reward_models ADD COLUMN IF NOT EXISTS replay_rounds VARCHAR;
ALTER TABLE reward_models ADD COLUMN IF NOT EXISTS replay_sha256 VARCHAR;
ALTER TABLE reward_models ADD COLUMN IF NOT EXISTS replay_capacity INTEGER;
ALTER TABLE reward_scores ADD COLUMN IF NOT EXISTS reward_model_path VARCHAR;
-- Bounds used to be stored with a second beta; selection owns the one beta now (pairs.beta).
ALTER TABLE reward_scores ALTER COLUMN lower DROP NOT NULL;
ALTER TABLE reward_scores ALTER COLUMN upper DROP NOT NULL;
ALTER TABLE reward_scores ALTER COLUMN beta DROP NOT NULL;
-- Policy-aware selection: the DPO policy's log-probs of a round's responses (with the policy
-- adapter that scored them), and the reference's, cached per (base model, completion,
-- max_length) so the reference is computed once per response, never once per round.
CREATE TABLE IF NOT EXISTS policy_logprobs (
    round_id VARCHAR NOT NULL,
    completion_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    logp_policy DOUBLE NOT NULL,
    logp_reference DOUBLE NOT NULL,
    tokens INTEGER NOT NULL,
    beta DOUBLE NOT NULL,
    policy_round VARCHAR,
    adapter_path VARCHAR,
    gradient_file VARCHAR,
    gradient_row INTEGER,
    sketch VARCHAR,
    PRIMARY KEY (round_id, completion_id)
);
CREATE TABLE IF NOT EXISTS reference_logprobs (
    base_model VARCHAR NOT NULL,
    completion_id VARCHAR NOT NULL,
    max_length INTEGER NOT NULL,
    logp DOUBLE NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (base_model, completion_id, max_length)
);
-- ActiveDPO's design matrix inverse after a round's picks: the next round continues from it.
CREATE TABLE IF NOT EXISTS policy_selection_state (
    round_id VARCHAR PRIMARY KEY,
    method VARCHAR NOT NULL,
    v_inv_path VARCHAR,
    sketch VARCHAR,
    created_at TIMESTAMP
);
-- The ledger: what each attempt of a model step asked of each pool member or judge. Never
-- replaced: a failed attempt cost what it cost, and a re-run adds its own row.
CREATE TABLE IF NOT EXISTS usage (
    run_id VARCHAR NOT NULL,
    round_id VARCHAR NOT NULL,
    step VARCHAR NOT NULL,
    actor VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    backend VARCHAR NOT NULL,
    endpoint VARCHAR,
    device VARCHAR,
    requests INTEGER NOT NULL,
    cached INTEGER NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    wall_seconds DOUBLE NOT NULL,
    gpu_seconds DOUBLE,
    failures INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    succeeded BOOLEAN NOT NULL,
    recorded_at TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, round_id, step, actor)
);
-- Answers a model step already got in an attempt that did not finish (responses, judge
-- log-probs), so a re-run asks only for what is missing. Cleared when the step succeeds.
CREATE TABLE IF NOT EXISTS call_cache (
    round_id VARCHAR NOT NULL,
    step VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    payload VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (round_id, step, key)
);
-- A pair's method could not apply and another rule picked it (a policy method's first round:
-- 'random'); NULL when the method picked it. Older files stored this as a ':random' suffix of
-- the method: split it off.
ALTER TABLE pairs ADD COLUMN IF NOT EXISTS fallback VARCHAR;
UPDATE pairs SET fallback = split_part(method, ':', 2), method = split_part(method, ':', 1)
WHERE method LIKE '%:%';
"""

# Bumped whenever SCHEMA changes: a connection runs SCHEMA only when the file's version is older.
SCHEMA_VERSION = 6


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
    "policy_logprobs",
    "policy_selection_state",
)


@dataclass(frozen=True)
class TakenPrompts:
    prompts: pl.DataFrame  # prompt_id, prompt, source in round order
    kept: bool  # the round already held these prompts
    left: int  # unused prompts after this round


@dataclass(frozen=True)
class CallCache:
    """One step's call cache for one round (see `DuckDBStore.cached_calls`)."""

    store: DuckDBStore
    round_id: str
    step: str

    def get(self, keys: Sequence[str]) -> dict[str, str]:
        return self.store.cached_calls(self.round_id, self.step, keys)

    def put(self, payloads: Mapping[str, str]) -> None:
        self.store.cache_calls(self.round_id, self.step, payloads)

    def clear(self) -> None:
        self.store.clear_cached_calls(self.round_id, self.step)

    def fill(
        self,
        keys: Sequence[str],
        known: dict,
        ask: Callable[[list[int], int], list],
        *,
        every: int,
        dump: Callable[[object], str],
        report: Callable[[int, int], None] | None = None,
    ) -> list:
        """Every key's answer, in order: `known` ones as they are, the rest asked for with
        `ask(indices, start)` in chunks of `every`, each chunk saved before the next is asked."""
        todo = [i for i, k in enumerate(keys) if k not in known]
        for start in range(0, len(todo), every):
            chunk = todo[start : start + every]
            fresh = {keys[i]: a for i, a in zip(chunk, ask(chunk, start), strict=True)}
            self.put({k: dump(a) for k, a in fresh.items()})
            known.update(fresh)
            if report:
                report(min(start + every, len(todo)), len(todo))
        return [known[k] for k in keys]


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
            _ensure_schema(con)
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: committed at the end, rolled back on error."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

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
        with self.transaction() as con:
            for table, rows in tables.items():
                con.execute(f"DELETE FROM {table} WHERE round_id = ?", [round_id])
                if rows.height:
                    _insert(con, table, rows)

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

    def take_round_prompts(
        self,
        round_id: str,
        round_index: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        retake: bool = False,
    ) -> TakenPrompts:
        """The round's prompts: the ones it already holds, or a new batch of unused prompts.

        Reading the unused prompts and writing the batch happen in one transaction (and the
        database refuses a prompt in two rounds), so two rounds started at once never share a
        prompt. A round keeps its prompts once taken, so re-running round k gives round k's
        prompts whatever later rounds took since. `retake` draws a new batch for a round that has
        no labels and no later round; the round's other rows are cleared with the old prompts.
        """
        with self.connect() as con:
            _add_unique_round_prompts(con)
        with self.transaction() as con:
            con.execute(
                "INSERT OR IGNORE INTO rounds VALUES (?, ?, ?)",
                [round_id, round_index, utcnow()],
            )
            held = con.execute(
                "SELECT r.prompt_id, p.prompt, p.source FROM round_prompts r "
                "JOIN prompts p USING (prompt_id) WHERE r.round_id = ? ORDER BY r.position",
                [round_id],
            ).pl()
            if held.height and not retake:
                return TakenPrompts(held, kept=True, left=_unused(con))
            if held.height:
                _check_retake(con, round_id, round_index)
                for table in (*ROUND_TABLES, "call_cache"):
                    con.execute(f"DELETE FROM {table} WHERE round_id = ?", [round_id])
            available = con.execute(
                "SELECT p.prompt_id, p.prompt, p.source FROM prompts p "
                "WHERE p.prompt_id NOT IN "
                "(SELECT prompt_id FROM round_prompts WHERE round_id <> ?) "
                "ORDER BY p.ingested_at, p.prompt_id",
                [round_id],
            ).pl()
            if shuffle:
                available = available.sample(fraction=1.0, shuffle=True, seed=seed)
            batch = available.head(batch_size)
            if batch.height:
                rows = batch.select(
                    pl.lit(round_id).alias("round_id"),
                    "prompt_id",
                    pl.int_range(0, batch.height, dtype=pl.Int32).alias("position"),
                )
                _insert(con, "round_prompts", rows)
        return TakenPrompts(batch, kept=False, left=available.height - batch.height)

    def shared_round_prompts(self) -> pl.DataFrame:
        """Prompts held by more than one round (only possible in files from before the rule)."""
        return self.query(
            "SELECT prompt_id, list(round_id ORDER BY round_id) AS rounds FROM round_prompts "
            "GROUP BY prompt_id HAVING count(*) > 1 ORDER BY prompt_id"
        )

    def rounds(self) -> pl.DataFrame:
        """Every round the store knows (it took prompts), in round order."""
        return self.query("SELECT round_id, round_index FROM rounds ORDER BY round_index")

    def previous_round(self, round_index: int) -> str | None:
        """The round the store knows right before index `round_index` (None: it is the first)."""
        return self.scalar(
            "SELECT round_id FROM rounds WHERE round_index < ? ORDER BY round_index DESC LIMIT 1",
            [round_index],
        )

    def reward_model_record(self, round_id: str) -> dict | None:
        rows = self.query("SELECT * FROM reward_models WHERE round_id = ?", [round_id])
        return rows.row(0, named=True) if rows.height else None

    def prompts_of_round(self, round_id: str) -> pl.DataFrame:
        return self.query(
            "SELECT r.prompt_id, p.prompt, p.source FROM round_prompts r "
            "JOIN prompts p USING (prompt_id) WHERE r.round_id = ? ORDER BY r.position",
            [round_id],
        )

    def prompts_judged_through(self, round_index: int) -> int:
        """Prompts with a verdict (a, b or tie) in the rounds up to `round_index`, inclusive.

        The one count that drives the anchor schedule, the same rule as the simulator's: a prompt
        counts once its round judged its pair, whatever the verdict; failed and unlabelled pairs
        taught the model nothing and do not count.
        """
        return int(
            self.scalar(
                "SELECT count(DISTINCT j.prompt_id) FROM judgements j JOIN rounds r "
                "USING (round_id) WHERE r.round_index <= ? AND j.preference IN ('a', 'b', 'tie')",
                [round_index],
            )
        )

    def decided_pairs(self, through_index: int | None = None) -> pl.DataFrame:
        """Every a/b verdict of the rounds up to `through_index` (all: None), oldest first.

        The order of the replay buffer (`auf_assets.core.round_step.ReplayBuffer`, which keeps
        the newest of them): by round, then by the prompt's position in its round.
        """
        return self.query(
            "SELECT j.round_id, r.round_index, q.position, j.pair_id, "
            "j.chosen_completion_id, j.rejected_completion_id FROM judgements j "
            "JOIN rounds r USING (round_id) LEFT JOIN round_prompts q "
            "ON q.round_id = j.round_id AND q.prompt_id = j.prompt_id "
            "WHERE (? IS NULL OR r.round_index <= ?) AND j.preference IN ('a', 'b') "
            "ORDER BY r.round_index, q.position NULLS FIRST, j.pair_id",
            [through_index, through_index],
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
        with self.transaction() as con:
            before = con.execute("SELECT count(*) FROM labels").fetchone()[0]
            if labels.height:
                _insert(con, "labels", labels, "INSERT OR IGNORE")
            new = con.execute("SELECT count(*) FROM labels").fetchone()[0] - before
            row = {**file_row, "status": "imported", "new_labels": new}
            con.execute("DELETE FROM imported_files WHERE file_sha256 = ?", [row["file_sha256"]])
            _insert(con, "imported_files", pl.DataFrame([row]))
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

    def labels_of_rounds(self, round_ids: Sequence[str]) -> pl.DataFrame:
        """Every label of `round_ids` in one query, each round's in `labels_of_round` order."""
        return self._with_rounds(
            round_ids,
            "SELECT * FROM labels WHERE round_id IN (SELECT round_id FROM wanted) "
            "ORDER BY labelled_at, imported_at, file, line",
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
            "LEFT JOIN reward_models m USING (round_id) "
            "LEFT JOIN rounds x USING (round_id) ORDER BY x.round_index NULLS LAST, r.round_id"
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
            _insert(con, "hub_pushes", pl.DataFrame([dict(row)]))

    # -- the policy's reference log-probs ------------------------------------------------------

    def reference_logprobs(
        self, base_model: str, completion_ids: Sequence[str], max_length: int
    ) -> dict[str, tuple[float, int]]:
        """Cached reference log-probs and token counts of these completions (the known ones)."""
        if not completion_ids:
            return {}
        with self.connect() as con:
            con.register("wanted", pl.DataFrame({"completion_id": list(completion_ids)}).to_arrow())
            rows = con.execute(
                "SELECT completion_id, logp, tokens FROM reference_logprobs JOIN wanted "
                "USING (completion_id) WHERE base_model = ? AND max_length = ?",
                [base_model, max_length],
            ).fetchall()
        return {cid: (float(lp), int(t)) for cid, lp, t in rows}

    def add_reference_logprobs(self, rows: pl.DataFrame) -> None:
        """Store reference log-probs (base_model, completion_id, max_length, logp, tokens)."""
        if rows.height == 0:
            return
        with self.transaction() as con:
            con.register("incoming", rows.to_arrow())
            con.execute(
                "INSERT INTO reference_logprobs SELECT base_model, completion_id, max_length, "
                "logp, tokens FROM incoming ON CONFLICT DO NOTHING"
            )

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

    def checkpoint_rounds(self, kind: str) -> list[str]:
        """The rounds that have a checkpoint of `kind`."""
        rows = self.query("SELECT round_id FROM trained_checkpoints WHERE kind = ?", [kind])
        return rows["round_id"].to_list()

    def record_evals(self, round_id: str, kind: str, rows: pl.DataFrame) -> None:
        """Replace the evaluation metrics of one (round, checkpoint kind)."""
        self._replace_where("checkpoint_evals", "round_id = ? AND kind = ?", [round_id, kind], rows)

    def evals(self) -> pl.DataFrame:
        return self.query(
            "SELECT e.*, r.round_index FROM checkpoint_evals e LEFT JOIN rounds r "
            "USING (round_id) ORDER BY r.round_index, e.kind, e.metric"
        )

    # -- the ledger and the call cache --------------------------------------------------------

    def record_usage(self, rows: pl.DataFrame) -> None:
        """Add ledger rows (one per actor of a step's attempt); a row recorded again replaces."""
        if rows.height:
            with self.transaction() as con:
                _insert(con, "usage", rows, verb="INSERT OR REPLACE")

    def usage(self, round_ids: Sequence[str] | None = None) -> pl.DataFrame:
        if round_ids is None:
            return self.query("SELECT * FROM usage ORDER BY round_id, step, actor, recorded_at")
        return self._with_rounds(
            round_ids,
            "SELECT * FROM usage WHERE round_id IN (SELECT round_id FROM wanted) "
            "ORDER BY round_id, step, actor, recorded_at",
        )

    def cached_calls(self, round_id: str, step: str, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        rows = self.query(
            "SELECT key, payload FROM call_cache WHERE round_id = ? AND step = ? "
            "AND key IN (SELECT * FROM unnest(?))",
            [round_id, step, list(keys)],
        )
        return dict(zip(rows["key"], rows["payload"], strict=True))

    def cache_calls(self, round_id: str, step: str, payloads: Mapping[str, str]) -> None:
        if not payloads:
            return
        rows = pl.DataFrame(
            {
                "round_id": round_id,
                "step": step,
                "key": list(payloads),
                "payload": list(payloads.values()),
                "created_at": utcnow(),
            }
        )
        with self.transaction() as con:
            _insert(con, "call_cache", rows, verb="INSERT OR REPLACE")

    def clear_cached_calls(self, round_id: str, step: str) -> None:
        with self.transaction() as con:
            con.execute("DELETE FROM call_cache WHERE round_id = ? AND step = ?", [round_id, step])

    def _replace_where(self, table: str, where: str, params: list, rows: pl.DataFrame) -> None:
        with self.transaction() as con:
            con.execute(f"DELETE FROM {table} WHERE {where}", params)
            if rows.height:
                _insert(con, table, rows)

    # -- files next to the database ------------------------------------------------------------

    def relative(self, path: str | os.PathLike) -> str:
        """How a file path is stored: relative to the home when inside it (the home can move)."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def resolve(self, stored: str) -> Path:
        """A stored file path as a path on this machine (the inverse of `relative`)."""
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    def remove_orphan_files(self, folders: Sequence[Path], older_than_s: float = 3600.0) -> int:
        """Delete files under `folders` that no row refers to; returns how many.

        A crash between writing a feature block or checkpoint and committing its row leaves such
        a file behind, as does a replaced checkpoint. Only files older than `older_than_s` go:
        a younger one may belong to a write that is about to commit.
        """
        referenced = set()
        for sql in (
            "SELECT DISTINCT file FROM features",
            "SELECT path FROM reward_models",
        ):
            referenced |= {self.resolve(v).resolve() for v in self.query(sql).to_series()}
        cutoff = time.time() - older_than_s
        removed = 0
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in folder.rglob("*"):
                if not path.is_file() or not _OWN_FILE.match(path.name):
                    continue  # only files this pipeline names (a shared folder keeps the rest)
                if path.resolve() in referenced or path.stat().st_mtime > cutoff:
                    continue
                path.unlink(missing_ok=True)
                removed += 1
        return removed

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
        with self.connect() as con:
            _insert(con, "features", index, "INSERT OR REPLACE")
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


# Feature blocks (uuid.npy) and reward-model checkpoints (round-0003.<hex>.safetensors), and
# their temporary names while being written.
_OWN_FILE = re.compile(r"^(round-\d{4,}(\.[0-9a-f]{8,})?\.safetensors|[0-9a-f]{32}\.npy)(\.tmp)?$")


def _insert(
    con: duckdb.DuckDBPyConnection, table: str, rows: pl.DataFrame, verb: str = "INSERT"
) -> None:
    """Insert a frame's rows by column name (`verb`: INSERT, INSERT OR IGNORE/REPLACE)."""
    con.register("incoming_rows", rows.to_arrow())
    try:
        con.execute(f"{verb} INTO {table} BY NAME SELECT * FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")


def _unused(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute(
        "SELECT count(*) FROM prompts WHERE prompt_id NOT IN (SELECT prompt_id FROM round_prompts)"
    ).fetchone()[0]


def _check_retake(con: duckdb.DuckDBPyConnection, round_id: str, round_index: int) -> None:
    """A round may draw new prompts only while nothing depends on the ones it holds."""
    later = con.execute(
        "SELECT min(round_id) FROM rounds r WHERE round_index > ? AND EXISTS "
        "(SELECT 1 FROM round_prompts p WHERE p.round_id = r.round_id)",
        [round_index],
    ).fetchone()[0]
    if later:
        raise StoreError(
            f"{round_id} cannot take new prompts: {later} already built on it. Re-run "
            f"{round_id} with its prompts (retake off), or start a new home"
        )
    labels = con.execute("SELECT count(*) FROM labels WHERE round_id = ?", [round_id]).fetchone()
    if labels[0]:
        raise StoreError(
            f"{round_id} cannot take new prompts: people already gave {labels[0]} labels on its "
            "pairs, which would be orphaned"
        )


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create or upgrade the tables once per file version (not on every connection)."""
    try:
        row = con.execute("SELECT max(version) FROM auf_schema").fetchone()
        if row and row[0] is not None and row[0] >= SCHEMA_VERSION:
            return
    except duckdb.CatalogException:
        pass
    con.execute(SCHEMA)
    _add_unique_round_prompts(con)
    con.execute("CREATE TABLE IF NOT EXISTS auf_schema (version INTEGER, applied_at TIMESTAMP)")
    con.execute("INSERT INTO auf_schema VALUES (?, ?)", [SCHEMA_VERSION, utcnow()])


def _add_unique_round_prompts(con: duckdb.DuckDBPyConnection) -> None:
    """A prompt belongs to one round at most: the database itself refuses a second round.

    A file written before the rule may already hold a prompt in two rounds (two rounds that ran
    at once); the index is then left out, and `shared_round_prompts` names the rounds to redo.
    """
    with contextlib.suppress(duckdb.ConstraintException):
        con.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS round_prompts_one_round ON round_prompts (prompt_id)"
        )


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
