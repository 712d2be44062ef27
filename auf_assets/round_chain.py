"""Which rounds are out of date because an earlier round changed after they were built.

Round k reads round k-1's checkpoint (its scores and its training start from it) and trains on
the judgements of rounds 1..k. Dagster cannot draw these edges (the asset graph must be acyclic
and there is no "previous partition" mapping for dynamic partitions), so every round records what
it read: the checkpoint file its scores and its training started from (a new file name per save)
and a hash of its replay buffer. Comparing those records with what is stored now tells, round by
round, which ones were built on inputs that have since been replaced. The first stale round makes
every later round stale too: they all descend from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from auf_assets.core.ensemble import EnsembleConfig
from auf_assets.partitions import round_index
from auf_assets.round import replay_fingerprint
from resources.store import DuckDBStore


@dataclass(frozen=True)
class RoundLink:
    round_id: str
    stale: bool
    why: str  # empty when current


def chain_report(
    store: DuckDBStore, replay_capacity: int = EnsembleConfig.replay_capacity
) -> list[RoundLink]:
    """Every round with scores or a reward model, in round order, current or stale (and why).

    Each replay buffer is rebuilt with the capacity its round used (`replay_capacity` is only
    the fallback for rows written before it was recorded): a capacity changed for later rounds
    does not make earlier ones stale.
    """
    models = store.reward_model_records()
    scored = store.score_checkpoints()
    # Pairs people labelled stay what they were: their selection is history, not a stale input.
    people = store.rounds_labelled_by_people()
    rounds = sorted(set(models) | set(scored), key=round_index)
    # One read of the chain's verdicts and rounds serves every round (sensors call this per tick).
    decided = store.decided_pairs()
    known = store.rounds()["round_id"].to_list()  # in round order
    previous_of = dict(zip(known[1:], known[:-1], strict=True))
    out: list[RoundLink] = []
    stale_from = None
    for rid in rounds:
        if stale_from:
            out.append(RoundLink(rid, True, f"built on {stale_from}, which is stale"))
            continue
        previous = previous_of.get(rid)
        expected = (models.get(previous) or {}).get("path") or "" if previous else ""
        scores = None if rid in people else scored.get(rid)
        why = _why_stale(previous, expected, models.get(rid), scores)
        if not why and rid in models:
            capacity = models[rid].get("replay_capacity") or replay_capacity
            buffer = decided.filter(pl.col("round_index") <= round_index(rid)).tail(capacity)
            if models[rid].get("replay_sha256") not in (None, replay_fingerprint(buffer)):
                why = (
                    "the judgements it trained on have changed since (this or an earlier "
                    "round's judgements were re-run)"
                )
        if why:
            stale_from = rid
        out.append(RoundLink(rid, bool(why), why))
    return out


def _why_stale(previous, expected, model, score_paths) -> str:
    if previous and not expected:
        return f"{previous} has no reward model now"
    # Rows written before lineage was recorded carry no path: nothing to compare them with.
    known = [p for p in score_paths or [] if p is not None]
    if any(p != expected for p in known) or (not previous and known):
        return (
            f"its reward_scores were computed with a checkpoint of {previous or 'no round'} "
            "that has since been replaced"
            if previous
            else "its reward_scores came from a checkpoint although it is the first round"
        )
    if model is not None and model.get("base_path") is not None and model["base_path"] != expected:
        return f"its reward_model started from a checkpoint of {previous} that has been replaced"
    return ""


def stale_rounds(report: list[RoundLink]) -> list[str]:
    return [link.round_id for link in report if link.stale]
