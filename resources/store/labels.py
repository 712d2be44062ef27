"""The store's labels and verdicts: every human label imported (and the files they came in),
the judges' per-response scores, each pair's verdict, the annotation batches sent out, and the
label progress per round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from resources.store.base import StoreBase, insert_rows

# A pair went to people unless a `judge+people` screening kept it with the judge (route '').
_SENT = "NOT EXISTS (SELECT 1 FROM judge_screening s WHERE s.pair_id = p.pair_id AND s.route = '')"


class LabelsAndJudgements(StoreBase):
    """labels, imported_files, judgements, judge_scores, annotation_batches."""

    # -- human labels ------------------------------------------------------------------------

    def imported_file(self, file_sha256: str) -> dict | None:
        rows = self._query("SELECT * FROM imported_files WHERE file_sha256 = ?", [file_sha256])
        return rows.row(0, named=True) if rows.height else None

    def record_label_file(self, file_row: Mapping, labels: pl.DataFrame) -> int:
        """Add a file's labels and mark the file imported, in one transaction.

        Labels already stored (same label_id) are left as they are. Returns how many were new.
        """
        with self._transaction() as con:
            new = insert_rows(con, "labels", labels, "ignore")
            row = {**file_row, "status": "imported", "new_labels": new}
            con.execute("DELETE FROM imported_files WHERE file_sha256 = ?", [row["file_sha256"]])
            insert_rows(con, "imported_files", pl.DataFrame([row]))
        return new

    def record_rejected_file(self, file_row: Mapping) -> None:
        """Remember a quarantined file (a file already imported keeps that status)."""
        row = {**file_row, "status": "quarantined", "new_labels": 0}
        with self._transaction() as con:
            con.execute(
                "DELETE FROM imported_files WHERE file_sha256 = ? AND status <> 'imported'",
                [row["file_sha256"]],
            )
            insert_rows(con, "imported_files", pl.DataFrame([row]), "ignore")

    def labels_of_round(self, round_id: str) -> pl.DataFrame:
        return self._query(
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
        """Per round with an annotation batch or labels: pairs sent to people (a `judge+people`
        round sends only those its screening routed), labelled pairs, labels, state."""
        return self._query(
            "WITH r AS (SELECT round_id FROM annotation_batches UNION "
            "SELECT DISTINCT round_id FROM labels) "
            "SELECT r.round_id, "
            "(SELECT count(*) FROM pairs p WHERE p.round_id = r.round_id AND " + _SENT + ") "
            "AS pairs, "
            "(SELECT count(DISTINCT l.pair_id) FROM labels l JOIN pairs p USING (pair_id) "
            " WHERE l.round_id = r.round_id AND " + _SENT + ") AS labelled_pairs, "
            "(SELECT count(*) FROM labels l WHERE l.round_id = r.round_id) AS labels, "
            "b.written_at, b.jsonl_path, b.csv_path, b.labelstudio_path, "
            "m.created_at AS trained_at "
            "FROM r LEFT JOIN annotation_batches b USING (round_id) "
            "LEFT JOIN reward_models m USING (round_id) "
            "LEFT JOIN rounds x USING (round_id) ORDER BY x.round_index NULLS LAST, r.round_id"
        )

    def screening_of_rounds(self, round_ids: Sequence[str] | None = None) -> pl.DataFrame:
        """The judge's screening verdicts (`judge_screening`) of `round_ids` (None: every round)
        with each pair's two responses and their models, in round order."""
        select = (
            "SELECT s.*, p.completion_a, p.completion_b, ca.model AS model_a, cb.model AS model_b "
            "FROM judge_screening s JOIN pairs p USING (pair_id) "
            "LEFT JOIN completions ca ON ca.completion_id = p.completion_a "
            "LEFT JOIN completions cb ON cb.completion_id = p.completion_b "
            "LEFT JOIN rounds r ON r.round_id = s.round_id "
        )
        order = "ORDER BY r.round_index NULLS LAST, s.round_id, s.pair_id"
        if round_ids is None:
            return self._query(select + order)
        return self._with_rounds(
            round_ids, select + "WHERE s.round_id IN (SELECT round_id FROM wanted) " + order
        )

    def rounds_labelled_by_people(self) -> set[str]:
        """Rounds with at least one imported human label."""
        return set(self._query("SELECT DISTINCT round_id FROM labels")["round_id"])

    # -- verdicts ----------------------------------------------------------------------------

    def prompts_judged_through(self, round_index: int) -> int:
        """Prompts with a verdict (a, b or tie) in the rounds up to `round_index`, inclusive.

        The one count that drives the anchor schedule, the same rule as the simulator's: a prompt
        counts once its round judged its pair, whatever the verdict; failed and unlabelled pairs
        taught the model nothing and do not count.
        """
        return int(
            self._scalar(
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
        return self._query(
            "SELECT j.round_id, r.round_index, q.position, j.pair_id, "
            "j.chosen_completion_id, j.rejected_completion_id FROM judgements j "
            "JOIN rounds r USING (round_id) LEFT JOIN round_prompts q "
            "ON q.round_id = j.round_id AND q.prompt_id = j.prompt_id "
            "WHERE (CAST(? AS INTEGER) IS NULL OR r.round_index <= ?) "
            "AND j.preference IN ('a', 'b') "
            "ORDER BY r.round_index, q.position NULLS FIRST, j.pair_id",
            [through_index, through_index],
        )

    def rounds_with_judgements(self) -> list[str]:
        """Rounds that have verdicts, in round order (by index, not by name)."""
        rows = self._query(
            "SELECT DISTINCT j.round_id, r.round_index FROM judgements j "
            "LEFT JOIN rounds r USING (round_id) ORDER BY r.round_index NULLS LAST, j.round_id"
        )
        return rows["round_id"].to_list()

    def judgements_per_round(self) -> pl.DataFrame:
        """round_id, labels: how many verdicts each round holds (what a label costs a budget)."""
        return self._query("SELECT round_id, count(*) AS labels FROM judgements GROUP BY round_id")

    def judgement_counts(self, round_id: str) -> dict:
        """What the verdicts check reads: the round's pairs and verdicts, judge verdicts on a
        missing score, people's verdicts without a label, failed and unlabelled pairs."""
        return self._query(
            "SELECT (SELECT count(*) FROM pairs WHERE round_id = $r) AS pairs, "
            "count(*) AS verdicts, "
            "count(*) FILTER (WHERE preference IN ('a', 'b') AND coalesce(source, '') <> 'people' "
            "AND (score_a IS NULL OR score_b IS NULL OR score_a = CAST('NaN' AS FLOAT8) "
            "OR score_b = CAST('NaN' AS FLOAT8))) "
            "AS unscored, "
            "count(*) FILTER (WHERE preference IN ('a', 'b', 'tie') AND source = 'people' "
            "AND coalesce(n_labels, 0) = 0) AS without_labels, "
            "count(*) FILTER (WHERE preference = 'failed') AS failed, "
            "count(*) FILTER (WHERE preference = 'unlabelled') AS unlabelled FROM judgements "
            "WHERE round_id = $r",
            {"r": round_id},
        ).row(0, named=True)
