"""The store's releases and checkpoints: what a dataset release reads, the released versions
and their pushes to a hub, the round chain's reward models, the downstream checkpoints trained
on the labels and their evaluations, and the policy's cached reference log-probs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from resources.store.base import StoreBase, insert_rows


class ReleasesAndCheckpoints(StoreBase):
    """dataset_releases, hub_pushes, reward_models, trained_checkpoints, checkpoint_evals,
    reference_logprobs (and the per-round policy_logprobs, policy_selection_state)."""

    # -- releases ----------------------------------------------------------------------------

    def release_pairs(self, round_ids: Sequence[str]) -> pl.DataFrame:
        """Every verdict of `round_ids` with its pair, prompt, both responses and their scores.

        `a` and `b` are the pair's responses as selected (not chosen/rejected: ties, failed and
        unlabelled pairs are in here too, so they can be counted). `confidence` is the judge's
        (the dataset report plots it; the released rows do not carry it).
        """
        return self._with_rounds(
            round_ids,
            "SELECT j.pair_id, j.round_id, r.round_index, j.prompt_id, q.prompt, q.source, "
            "q.origin AS prompt_origin, j.preference, j.score_a, j.score_b, j.labeller, "
            "j.source AS label_source, j.n_labels, j.labelled_at, j.confidence, "
            "p.method, p.fallback, p.beta, p.seed, p.completion_a, p.completion_b, "
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

    def record_release(self, row: Mapping) -> None:
        """Remember a built dataset version (a rebuilt version replaces its row)."""
        self._replace_where(
            "dataset_releases", "version = ?", [row["version"]], pl.DataFrame([dict(row)])
        )

    def latest_release(self) -> dict | None:
        rows = self._query("SELECT * FROM dataset_releases ORDER BY built_at DESC LIMIT 1")
        return rows.row(0, named=True) if rows.height else None

    def record_push(self, row: Mapping) -> None:
        with self._connect() as con:
            insert_rows(con, "hub_pushes", pl.DataFrame([dict(row)]))

    # -- the round chain's reward models -----------------------------------------------------

    def reward_model_record(self, round_id: str) -> dict | None:
        rows = self._query("SELECT * FROM reward_models WHERE round_id = ?", [round_id])
        return rows.row(0, named=True) if rows.height else None

    def reward_model_records(self) -> dict[str, dict]:
        """Every round's reward-model record, by round id."""
        return {r["round_id"]: r for r in self._query("SELECT * FROM reward_models").to_dicts()}

    # -- the policy's reference log-probs ------------------------------------------------------

    def reference_logprobs(
        self, base_model: str, completion_ids: Sequence[str], max_length: int
    ) -> dict[str, tuple[float, int]]:
        """Cached reference log-probs and token counts of these completions (the known ones)."""
        if not completion_ids:
            return {}
        wanted = pl.DataFrame(
            {"completion_id": list(completion_ids)}, schema={"completion_id": pl.String}
        )
        rows = self._with_frame(
            "wanted",
            wanted,
            "SELECT completion_id, logp, tokens FROM reference_logprobs JOIN wanted "
            "USING (completion_id) WHERE base_model = ? AND max_length = ?",
            [base_model, max_length],
        )
        return {cid: (float(lp), int(t)) for cid, lp, t in rows.iter_rows()}

    def add_reference_logprobs(self, rows: pl.DataFrame) -> None:
        """Store reference log-probs (base_model, completion_id, max_length, logp, tokens)."""
        if rows.height == 0:
            return
        columns = ["base_model", "completion_id", "max_length", "logp", "tokens"]
        with self._transaction() as con:
            insert_rows(con, "reference_logprobs", rows.select(columns), "ignore")

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
        rows = self._query(
            "SELECT * FROM trained_checkpoints WHERE kind = ? AND round_id = ?", [kind, round_id]
        )
        return rows.row(0, named=True) if rows.height else None

    def checkpoint_rounds(self, kind: str) -> list[str]:
        """The rounds that have a checkpoint of `kind`."""
        rows = self._query("SELECT round_id FROM trained_checkpoints WHERE kind = ?", [kind])
        return rows["round_id"].to_list()

    def record_evals(self, round_id: str, kind: str, rows: pl.DataFrame) -> None:
        """Replace the evaluation metrics of one (round, checkpoint kind)."""
        self._replace_where("checkpoint_evals", "round_id = ? AND kind = ?", [round_id, kind], rows)

    def evals(self) -> pl.DataFrame:
        return self._query(
            "SELECT e.*, r.round_index FROM checkpoint_evals e LEFT JOIN rounds r "
            "USING (round_id) ORDER BY r.round_index, e.kind, e.metric"
        )
