"""The store's ledger and call cache: what each attempt of a model step asked of each pool
member or judge (never replaced: a failed attempt cost what it cost), and the answers a step
already got in an attempt that did not finish, so a re-run asks only for what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from resources.store.base import StoreBase, insert_rows, utcnow


class LedgerAndCallCache(StoreBase):
    """usage, call_cache."""

    def record_usage(self, rows: pl.DataFrame) -> None:
        """Add ledger rows (one per actor of a step's attempt); a row recorded again replaces."""
        if rows.height:
            with self._transaction() as con:
                insert_rows(con, "usage", rows, "replace")

    def usage(self, round_ids: Sequence[str] | None = None) -> pl.DataFrame:
        if round_ids is None:
            return self._query("SELECT * FROM usage ORDER BY round_id, step, actor, recorded_at")
        return self._with_rounds(
            round_ids,
            "SELECT * FROM usage WHERE round_id IN (SELECT round_id FROM wanted) "
            "ORDER BY round_id, step, actor, recorded_at",
        )

    def cached_calls(self, round_id: str, step: str, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        rows = self._query(
            "SELECT key, payload FROM call_cache WHERE round_id = ? AND step = ? "
            "AND key IN (SELECT unnest(CAST(? AS VARCHAR[])))",
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
        with self._transaction() as con:
            insert_rows(con, "call_cache", rows, "replace")

    def clear_cached_calls(self, round_id: str, step: str) -> None:
        with self._transaction() as con:
            con.execute("DELETE FROM call_cache WHERE round_id = ? AND step = ?", [round_id, step])


@dataclass(frozen=True)
class CallCache:
    """One step's call cache for one round (see `DuckDBStore.cached_calls`)."""

    store: LedgerAndCallCache
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
