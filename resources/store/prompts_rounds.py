"""The store's prompts and rounds: the prompt pool, the rounds, and the prompts each round took.

A prompt belongs to one round at most (a unique index), and a round keeps the prompts it took:
re-running round k gives round k's prompts, whatever later rounds took since.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from resources.store.base import StoreBase, StoreError, insert_rows, utcnow
from resources.store.schema import ROUND_TABLES, add_unique_round_prompts


@dataclass(frozen=True)
class TakenPrompts:
    prompts: pl.DataFrame  # prompt_id, prompt, source in round order
    kept: bool  # the round already held these prompts
    left: int  # unused prompts after this round


class PromptsAndRounds(StoreBase):
    """Prompts, rounds, round_prompts: taking a round's prompts, and reading them back."""

    def add_prompts(self, prompts: pl.DataFrame, origin: str) -> dict[str, int]:
        """Insert prompts whose id is new; an id already stored keeps its text.

        Returns counts of new and already-known prompts, and of ids stored with another text
        (reported, never overwritten: pairs and labels may already refer to them).
        """
        rows = prompts.select("prompt_id", "prompt", "source").with_columns(
            origin=pl.lit(origin), ingested_at=pl.lit(utcnow())
        )
        with self._transaction() as con:
            con.register("incoming", rows)
            try:
                conflicts = con.execute(
                    "SELECT count(*) FROM incoming i JOIN prompts p USING (prompt_id) "
                    "WHERE p.prompt <> i.prompt"
                ).fetchone()[0]
            finally:
                con.unregister("incoming")
            new = insert_rows(con, "prompts", rows, "ignore")
        known = rows.height - new
        return {"new": new, "known": known - conflicts, "conflicting": conflicts}

    def register_round(self, round_id: str, round_index: int) -> None:
        with self._connect() as con:
            con.execute(
                "INSERT INTO rounds VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [round_id, round_index, utcnow()],
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
        with self._connect() as con:
            add_unique_round_prompts(con)
        with self._transaction() as con:
            # Rounds taking prompts at once queue here (Postgres; DuckDB holds the file).
            con.serialize("take_round_prompts")
            con.execute(
                "INSERT INTO rounds VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
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
                insert_rows(con, "round_prompts", rows)
        return TakenPrompts(batch, kept=False, left=available.height - batch.height)

    def shared_round_prompts(self) -> pl.DataFrame:
        """Prompts held by more than one round (only possible in files from before the rule)."""
        return self._query(
            "SELECT prompt_id, array_agg(round_id ORDER BY round_id) AS rounds FROM round_prompts "
            "GROUP BY prompt_id HAVING count(*) > 1 ORDER BY prompt_id"
        )

    def rounds(self) -> pl.DataFrame:
        """Every round the store knows (it took prompts), in round order."""
        return self._query("SELECT round_id, round_index FROM rounds ORDER BY round_index")

    def previous_round(self, round_index: int) -> str | None:
        """The round the store knows right before index `round_index` (None: it is the first)."""
        return self._scalar(
            "SELECT round_id FROM rounds WHERE round_index < ? ORDER BY round_index DESC LIMIT 1",
            [round_index],
        )

    def prompts_of_round(self, round_id: str) -> pl.DataFrame:
        return self._query(
            "SELECT r.prompt_id, p.prompt, p.source FROM round_prompts r "
            "JOIN prompts p USING (prompt_id) WHERE r.round_id = ? ORDER BY r.position",
            [round_id],
        )

    def unused_prompt_count(self) -> int:
        """Prompts that no round has taken yet (0: the pool is used up, or nothing ingested)."""
        return int(
            self._scalar(
                "SELECT count(*) FROM prompts WHERE prompt_id NOT IN "
                "(SELECT prompt_id FROM round_prompts)"
            )
        )

    def held_out_prompts(self, prompt_ids: Sequence[str]) -> pl.DataFrame:
        """prompt_id, prompt of `prompt_ids` (a held-out split), then of every prompt no round
        took (by id): the prompts a policy has never been trained on."""
        return self._query(
            "SELECT prompt_id, prompt FROM prompts "
            "WHERE prompt_id IN (SELECT unnest(CAST($ids AS VARCHAR[]))) "
            "UNION ALL (SELECT prompt_id, prompt FROM prompts WHERE prompt_id NOT IN "
            "(SELECT prompt_id FROM round_prompts) ORDER BY prompt_id)",
            {"ids": list(prompt_ids)},
        )

    def round_overview(self) -> pl.DataFrame:
        """Per round, in round order: its prompts, pairs and decided (a/b) verdicts, and its
        reward model's base round, replay pairs and prompts done (null: no reward model yet)."""
        return self._query(
            "SELECT r.round_id, "
            "(SELECT count(*) FROM round_prompts p WHERE p.round_id = r.round_id) AS prompts, "
            "(SELECT count(*) FROM pairs p WHERE p.round_id = r.round_id) AS pairs, "
            "(SELECT count(*) FROM judgements j WHERE j.round_id = r.round_id "
            " AND j.preference IN ('a', 'b')) AS decided, "
            "m.base_round, m.pairs_trained, m.prompts_done "
            "FROM rounds r LEFT JOIN reward_models m USING (round_id) ORDER BY r.round_index"
        )


def _unused(con) -> int:
    return con.execute(
        "SELECT count(*) FROM prompts WHERE prompt_id NOT IN (SELECT prompt_id FROM round_prompts)"
    ).fetchone()[0]


def _check_retake(con, round_id: str, round_index: int) -> None:
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
