"""The store's pairs: the reward scores a round selects from, the pairs it selected, and how
each pair is shown to people (which response is "A", fixed once a pair is sent out).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from resources.store.base import StoreBase, insert_rows

# A mean or spread that is not a finite number (both backends compare NaN equal to itself).
_NOT_FINITE = "(CAST('NaN' AS FLOAT8), CAST('Infinity' AS FLOAT8), CAST('-Infinity' AS FLOAT8))"


class ScoresAndPairs(StoreBase):
    """reward_scores, pairs, presentations."""

    # -- reward scores -----------------------------------------------------------------------

    def reward_score_counts(self, round_id: str) -> dict:
        """What the scores check reads: the round's scored responses, those with a non-finite
        mean or spread or a negative spread, and its responses."""
        return self._query(
            "SELECT count(*) AS scored, count(*) FILTER (WHERE mu IN " + _NOT_FINITE + " OR "
            "sigma IN "
            + _NOT_FINITE
            + " OR sigma < 0) AS bad, (SELECT count(*) FROM completions WHERE "
            "round_id = $r) AS responses FROM reward_scores WHERE round_id = $r",
            {"r": round_id},
        ).row(0, named=True)

    def score_checkpoints(self) -> dict[str, list]:
        """Per round with scores: the reward-model checkpoint files its scores came from."""
        rows = self._query(
            "SELECT round_id, array_agg(DISTINCT reward_model_path) AS paths "
            "FROM reward_scores GROUP BY round_id"
        )
        return {r["round_id"]: r["paths"] for r in rows.to_dicts()}

    # -- pairs -------------------------------------------------------------------------------

    def pair_counts(self, round_id: str) -> dict:
        """What the pairs check reads: the round's pairs, prompts with a pair, prompts, pairs of
        one response twice, the selection method and its fallback, and pairs with a response to
        another prompt."""
        return self._query(
            "SELECT count(*) AS pairs, count(DISTINCT s.prompt_id) AS prompts_with_pairs, "
            "(SELECT count(*) FROM round_prompts WHERE round_id = $r) AS prompts, "
            "count(*) FILTER (WHERE s.completion_a = s.completion_b) AS same_response, "
            "min(s.method) AS method, min(s.fallback) AS fallback, "
            "count(*) FILTER (WHERE a.prompt_id IS DISTINCT FROM s.prompt_id OR "
            "b.prompt_id IS DISTINCT FROM s.prompt_id) AS foreign_response "
            "FROM pairs s LEFT JOIN completions a ON a.completion_id = s.completion_a "
            "LEFT JOIN completions b ON b.completion_id = s.completion_b WHERE s.round_id = $r",
            {"r": round_id},
        ).row(0, named=True)

    def pairs_with_texts(self, round_id: str) -> pl.DataFrame:
        """The round's pairs with the prompt and both responses, in the order the round took
        its prompts: pair_id, round_id, prompt_id, prompt, completion_a, completion_b,
        response_a, response_b."""
        return self._query(
            "SELECT s.pair_id, s.round_id, s.prompt_id, p.prompt, s.completion_a, "
            "s.completion_b, a.response AS response_a, b.response AS response_b FROM pairs s "
            "JOIN prompts p USING (prompt_id) "
            "JOIN completions a ON a.completion_id = s.completion_a "
            "JOIN completions b ON b.completion_id = s.completion_b "
            "LEFT JOIN round_prompts r ON r.round_id = s.round_id AND r.prompt_id = s.prompt_id "
            "WHERE s.round_id = ? ORDER BY r.position, s.pair_id",
            [round_id],
        )

    # -- presentations -----------------------------------------------------------------------

    def add_presentations(self, rows: pl.DataFrame) -> int:
        """Record how pairs are shown (A/B); a pair shown before keeps its first presentation."""
        if rows.height == 0:
            return 0
        with self._transaction() as con:
            return insert_rows(con, "presentations", rows, "ignore")

    def pair_infos(self, pair_ids: Sequence[str]) -> pl.DataFrame:
        """pair_id, round_id, completion_a, completion_b, shown_as_a (null: never sent out)."""
        wanted = pl.DataFrame(
            {"pair_id": list(dict.fromkeys(pair_ids))}, schema={"pair_id": pl.String}
        )
        return self._with_frame(
            "wanted",
            wanted,
            "SELECT p.pair_id, p.round_id, p.completion_a, p.completion_b, s.shown_as_a "
            "FROM wanted w JOIN pairs p USING (pair_id) "
            "LEFT JOIN presentations s USING (pair_id)",
        )

    def presentation_swaps(self, round_id: str) -> pl.DataFrame:
        """pair_id, swapped of every pair of the round shown to people (swapped: the pair's
        second response is shown as "A")."""
        return self._query(
            "SELECT pair_id, swapped FROM presentations WHERE round_id = ?", [round_id]
        )
