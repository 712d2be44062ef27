"""The shared validation path every input goes through (:func:`_batch_from_records`): find the
prompt column (recognising the layout), take the first user turn of chats, check ids and
sources, and drop empty, repeated and too long prompts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from auf_assets.core.prompts.batch import PromptBatch, normalise_prompt, stable_prompt_id
from auf_assets.core.prompts.errors import PromptInputError, _describe_type
from auf_assets.core.prompts.readers import _MISSING, _Table
from auf_assets.core.user_files import describe_names

_CHAT_COLUMNS = ("messages", "conversations", "chosen")
_LAYOUTS_TRIED = (
    "a 'prompt' column, an 'instruction' column (UltraFeedback, AlpacaEval), or a chat column "
    "'messages', 'conversations' or 'chosen' holding lists of {role, content} messages (first "
    "user turn)"
)
_USER_ROLES = ("user", "human")


@dataclass(frozen=True)
class _Layout:
    column: str
    chat: bool  # values are lists of chat messages; the prompt is the first user turn


def _is_message(value: Any) -> bool:
    return isinstance(value, Mapping) and (
        ("role" in value and "content" in value) or ("from" in value and "value" in value)
    )


def _is_chat(value: Any) -> bool:
    """A non-empty list of ``{"role", "content"}`` (or ShareGPT ``{"from", "value"}``) objects."""
    return isinstance(value, (list, tuple)) and bool(value) and all(_is_message(m) for m in value)


def _resolve_layout(table: _Table, prompt_column: str | None, origin: str) -> _Layout:
    columns = table.columns
    found = describe_names(columns)  # never a line of a file that is not a table
    if prompt_column is not None:
        if prompt_column not in columns:
            raise PromptInputError(
                origin,
                f"no prompt column {prompt_column!r} (columns found: {found}); "
                "use the prompt_column option to name the column that holds the prompts",
            )
        return _Layout(prompt_column, _is_chat(table.first_value(prompt_column)))

    # a 'prompt' or 'instruction' column wins when present, whatever it holds: a prompt that is
    # not text is then reported on its row rather than another column being read silently
    for name in ("prompt", "instruction"):
        if name in columns:
            return _Layout(name, _is_chat(table.first_value(name)))
    skipped = []
    for name in _CHAT_COLUMNS:
        if name in columns:
            if _is_chat(table.first_value(name)):
                return _Layout(name, True)
            skipped.append(name)
    note = ""
    if skipped:
        listed = ", ".join(repr(c) for c in skipped)
        note = f"; {listed} {'is' if len(skipped) == 1 else 'are'} there but not chat messages"
    raise PromptInputError(
        origin,
        f"no prompt column found (columns found: {found}); looked for {_LAYOUTS_TRIED}{note}; "
        "use the prompt_column option to name the column that holds the prompts",
    )


def _resolve_source_column(table: _Table, source_column: str) -> str | None:
    if source_column in table.columns:
        return source_column
    # AlpacaEval names the origin of each instruction 'dataset'
    if (
        source_column == "source"
        and "dataset" in table.columns
        and isinstance(table.first_value("dataset"), str)
    ):
        return "dataset"
    return None


def _first_user_turn(value: Any, column: str, origin: str, row: int, where: str) -> Any:
    """The content of the first user turn of a chat (not checked for being text here)."""
    if not isinstance(value, (list, tuple)) or not all(_is_message(m) for m in value):
        raise PromptInputError(
            origin,
            f"the {column!r} value must be a list of chat messages ({{role, content}} objects), "
            f"got {_describe_type(value)}",
            row=row,
            where=where,
        )
    roles = []
    for message in value:
        if "role" in message and "content" in message:
            role, content = message.get("role"), message.get("content")
        else:
            role, content = message.get("from"), message.get("value")
        if isinstance(role, str) and role.strip().lower() in _USER_ROLES:
            return content
        roles.append(str(role))
    seen = ", ".join(dict.fromkeys(roles)) if roles else "none"
    raise PromptInputError(
        origin,
        f"no user turn in the {column!r} chat (roles found: {seen})",
        row=row,
        where=where,
    )


def _batch_from_records(
    table: _Table,
    *,
    origin: str,
    where: str,
    prompt_column: str | None,
    id_column: str,
    source_column: str,
    default_source: str,
    limit: int | None,
    max_prompt_chars: int | None,
) -> PromptBatch:
    layout = _resolve_layout(table, prompt_column, origin)
    column = layout.column
    has_ids = id_column in table.columns
    source_name = _resolve_source_column(table, source_column)

    ids: list[str] = []
    texts: list[str] = []
    sources: list[str] = []
    duplicates: list[dict] = []
    empty: list[dict] = []
    too_long: list[dict] = []
    # id -> (row, normalised text); normalised text -> (row, id)
    by_id: dict[str, tuple[int, str]] = {}
    by_text: dict[str, tuple[int, str]] = {}

    wanted = [column] + [c for c in (id_column, source_name) if c in table.columns]
    for row, rec in table.rows(wanted):
        if limit is not None and len(ids) >= limit:
            break
        value = rec.get(column, _MISSING)
        if value is _MISSING:
            raise PromptInputError(origin, f"no {column!r} field", row=row, where=where)
        if layout.chat:
            value = _first_user_turn(value, column, origin, row, where)
            if not isinstance(value, str):
                raise PromptInputError(
                    origin,
                    f"the first user turn in the {column!r} chat must be text, "
                    f"got {_describe_type(value)}",
                    row=row,
                    where=where,
                )
        elif not isinstance(value, str):
            raise PromptInputError(
                origin,
                f"the prompt must be text, got {_describe_type(value)}",
                row=row,
                where=where,
            )
        norm = normalise_prompt(value)
        if not norm:
            empty.append({"row": row})
            continue

        pid = _coerce_id(rec.get(id_column), id_column, origin, row, where) if has_ids else None
        if pid is None:
            pid = stable_prompt_id(value)
        if max_prompt_chars is not None and len(value) > max_prompt_chars:
            too_long.append({"row": row, "prompt_id": pid, "chars": len(value)})
            continue

        seen_id = by_id.get(pid)
        if seen_id is not None:
            first_row, first_norm = seen_id
            if first_norm != norm:
                raise PromptInputError(
                    origin,
                    f"{id_column} {pid!r} is used for two different prompts "
                    f"({where}s {first_row} and {row})",
                    row=row,
                    where=where,
                )
            duplicates.append({"row": row, "prompt_id": pid, "duplicate_of_row": first_row})
            continue
        seen_text = by_text.get(norm)
        if seen_text is not None:
            duplicates.append({"row": row, "prompt_id": pid, "duplicate_of_row": seen_text[0]})
            continue

        src = default_source
        if source_name is not None:
            raw_src = rec.get(source_name)
            if isinstance(raw_src, str):
                if raw_src.strip():
                    src = raw_src.strip()
            elif raw_src is not None:
                raise PromptInputError(
                    origin,
                    f"the {source_name!r} value must be text, got {_describe_type(raw_src)}",
                    row=row,
                    where=where,
                )

        by_id[pid] = (row, norm)
        by_text[norm] = (row, pid)
        ids.append(pid)
        texts.append(value)
        sources.append(src)

    if not ids:
        reasons = []
        if empty:
            reasons.append(f"{len(empty)} empty")
        if duplicates:
            reasons.append(f"{len(duplicates)} duplicate")
        if too_long:
            reasons.append(f"{len(too_long)} over max_prompt_chars={max_prompt_chars:,}")
        detail = f" ({', '.join(reasons)} dropped)" if reasons else ""
        raise PromptInputError(origin, f"no usable prompts: every row was dropped{detail}")

    frame = pl.DataFrame(
        {"prompt_id": ids, "prompt": texts, "source": sources},
        schema={"prompt_id": pl.String, "prompt": pl.String, "source": pl.String},
    )
    return PromptBatch(
        prompts=frame,
        duplicates=duplicates,
        empty=empty,
        origin=origin,
        too_long=too_long,
        max_prompt_chars=max_prompt_chars,
    )


def _coerce_id(value: Any, id_column: str, origin: str, row: int, where: str) -> str | None:
    """A row's id as text; ``None`` (missing) means: derive it from the prompt text."""
    if value is None or value is _MISSING:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PromptInputError(
            origin,
            f"the {id_column!r} value must be a string or an integer, got {_describe_type(value)}",
            row=row,
            where=where,
        )
    text = str(value).strip()
    if not text:
        raise PromptInputError(origin, f"the {id_column!r} value is empty", row=row, where=where)
    return text
