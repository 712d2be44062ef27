"""The store's tables: the DDL, its version, and the forward migration of an older database.

A database (the DuckDB file or the Postgres one) records the schema version it was last brought
to (`auf_schema`); a connection runs the DDL only when that version is older than
`SCHEMA_VERSION`, and refuses a database from a newer version of the code. Every statement is
idempotent (`CREATE ... IF NOT EXISTS`, `ADD COLUMN IF NOT EXISTS`), so the same DDL creates a
new database and upgrades an old one, on both backends (Postgres spells DOUBLE out).
"""

from __future__ import annotations

import contextlib
import re
from datetime import datetime

import duckdb

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
-- The judge's confidence in a decided verdict (P(the chosen response is better)); null for ties,
-- failures and sources without one.
ALTER TABLE judgements ADD COLUMN IF NOT EXISTS confidence DOUBLE;
-- The judge's verdict on every selected pair of a `judge+people` round, made before people see
-- any (the judgements columns), and where the pair went: 'unsure' and 'calibration' to people,
-- '' nowhere (the judge's verdict stands).
CREATE TABLE IF NOT EXISTS judge_screening (
    pair_id VARCHAR PRIMARY KEY,
    round_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    score_a DOUBLE,
    score_b DOUBLE,
    preference VARCHAR NOT NULL,
    chosen_completion_id VARCHAR,
    rejected_completion_id VARCHAR,
    labeller VARCHAR NOT NULL,
    labelled_at TIMESTAMP,
    source VARCHAR,
    n_labels INTEGER,
    votes VARCHAR,
    raw_choices VARCHAR,
    confidence DOUBLE,
    route VARCHAR NOT NULL
);
"""

# Bumped whenever SCHEMA changes: a connection runs SCHEMA only when the file's version is older.
SCHEMA_VERSION = 8


# Tables whose rows belong to one round partition (the unit of idempotent replacement).
ROUND_TABLES = (
    "round_prompts",
    "completions",
    "reward_scores",
    "pairs",
    "judge_scores",
    "judgements",
    "judge_screening",
    "reward_models",
    "annotation_batches",
    "policy_logprobs",
    "policy_selection_state",
)


class StoreError(RuntimeError):
    """A store operation that cannot go ahead; nothing was written."""


def schema_sql(dialect: str) -> str:
    """The DDL in the backend's dialect. Postgres also gets an index on `round_id` of every
    per-round table (and the labels): without one each "rows of this round" read scans the
    whole history (measured in docs/scaling.md); DuckDB's zone maps serve it without."""
    if dialect == "duckdb":
        return SCHEMA
    indexes = "".join(
        f"CREATE INDEX IF NOT EXISTS {table}_by_round ON {table} (round_id);\n"
        for table in (*ROUND_TABLES, "labels")
    )
    return re.sub(r"\bDOUBLE\b", "DOUBLE PRECISION", SCHEMA) + indexes


def stored_version(con) -> int | None:
    if not con.has_table("auf_schema"):
        return None
    return con.execute("SELECT max(version) FROM auf_schema").fetchone()[0]


def ensure_schema(con, now: datetime, where: str) -> None:
    """Create or upgrade the tables once per database version (not on every connection);
    refuse a database that a newer version of the code brought further."""
    version = stored_version(con)
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(
            f"the store {where} holds schema version {version}, written by a newer version of "
            f"this code (this one knows version {SCHEMA_VERSION}); upgrade the code, nothing "
            "was changed"
        )
    if version is not None and version == SCHEMA_VERSION:
        return
    if con.dialect == "duckdb":
        _apply(con, now)
        return
    with con.transaction():
        con.serialize("schema")  # several processes starting at once migrate once
        if stored_version(con) != SCHEMA_VERSION:
            _apply(con, now)


def _apply(con, now: datetime) -> None:
    con.execute(schema_sql(con.dialect))
    add_unique_round_prompts(con)
    con.execute("CREATE TABLE IF NOT EXISTS auf_schema (version INTEGER, applied_at TIMESTAMP)")
    con.execute("INSERT INTO auf_schema VALUES (?, ?)", [SCHEMA_VERSION, now])


def add_unique_round_prompts(con) -> None:
    """A prompt belongs to one round at most: the database itself refuses a second round.

    A database written before the rule may already hold a prompt in two rounds (two rounds that
    ran at once); the index is then left out, and `shared_round_prompts` names the rounds to
    redo.
    """
    if con.dialect == "duckdb":
        with contextlib.suppress(duckdb.ConstraintException):
            con.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {_UNIQUE_INDEX}")
        return
    import psycopg

    present = con.execute(
        "SELECT count(*) FROM pg_indexes WHERE indexname = 'round_prompts_one_round' "
        "AND schemaname = current_schema()"
    ).fetchone()[0]
    if not present:
        with contextlib.suppress(psycopg.errors.UniqueViolation), con.transaction():
            con.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {_UNIQUE_INDEX}")


_UNIQUE_INDEX = "round_prompts_one_round ON round_prompts (prompt_id)"
