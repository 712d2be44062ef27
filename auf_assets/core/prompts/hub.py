"""Prompts from a dataset on the Hugging Face Hub (:func:`load_hub_prompts`), and the messages
a user can act on when ``datasets.load_dataset`` fails."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from auf_assets.core.prompts.batch import MAX_PROMPT_CHARS, PromptBatch
from auf_assets.core.prompts.errors import PromptInputError, _check_limit, _first_line
from auf_assets.core.prompts.loading import prompts_from_frame


def load_hub_prompts(
    dataset_id: str,
    *,
    split: str = "train",
    config_name: str | None = None,
    revision: str | None = None,
    prompt_column: str | None = None,
    id_column: str = "prompt_id",
    source_column: str = "source",
    default_source: str | None = None,
    limit: int | None = None,
    max_prompt_chars: int | None = MAX_PROMPT_CHARS,
) -> PromptBatch:
    """Read and validate the prompts of a dataset on the Hugging Face Hub.

    ``dataset_id`` is a Hub id such as ``"HuggingFaceH4/ultrafeedback_binarized"``; it is loaded
    with ``datasets.load_dataset(dataset_id, name=config_name, split=split, revision=revision)``,
    so the local ``datasets`` cache is used and, with ``HF_HUB_OFFLINE=1``, only the cache (which
    then serves the latest cached version whatever ``revision`` says). The rows then go through
    the same validation as files (:func:`prompts_from_frame`); the layout is recognised when
    ``prompt_column`` is ``None``. Without a source column the source is ``default_source`` or
    the dataset id. ``origin`` reads ``hf://datasets/{id}[:{config}] split={split}[@{revision}]``.

    Raises :class:`PromptInputError` for a malformed id, a dataset that is neither reachable nor
    cached (the message says whether offline mode is on and how to fix it), an unknown split or
    config (listing the available ones when ``datasets`` names them), or any other load failure.
    """
    _check_limit(limit)
    _check_limit(max_prompt_chars, "max_prompt_chars")
    origin = f"hf://datasets/{dataset_id}"
    if config_name:
        origin += f":{config_name}"
    origin += f" split={split}"
    if revision:
        origin += f"@{revision}"
    _check_hub_id(dataset_id, origin)

    import datasets  # imported here: slow to import and only needed for this input kind

    try:
        loaded = datasets.load_dataset(dataset_id, name=config_name, split=split, revision=revision)
    except Exception as exc:  # datasets/huggingface_hub raise many kinds; all become one kind
        raise _hub_load_error(exc, dataset_id, origin, split, config_name, datasets) from exc

    if isinstance(loaded, Mapping):  # a DatasetDict: only when split=None slips through
        splits = [str(k) for k in loaded]
        if "train" not in loaded:
            raise PromptInputError(
                origin, f"no split was named; pass split= one of {', '.join(splits)}"
            )
        loaded = loaded["train"]
    try:
        df = loaded.to_polars()
    except Exception as exc:
        raise PromptInputError(origin, f"cannot read the dataset ({_first_line(exc)})") from exc
    return prompts_from_frame(
        df,
        origin=origin,
        prompt_column=prompt_column,
        id_column=id_column,
        source_column=source_column,
        default_source=default_source if default_source is not None else dataset_id,
        limit=limit,
        max_prompt_chars=max_prompt_chars,
    )


# A Hub dataset id: "name" or "namespace/name"; letters, digits, "-", "_", "."; at most 96 each.
_HUB_ID_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_HUB_FIX = (
    "run this once with network access (HF_HUB_OFFLINE unset or HF_HUB_OFFLINE=0) so that "
    "datasets downloads and caches it, or download it first with datasets.load_dataset({call}) "
    "where the Hub is reachable and reuse that datasets cache (HF_DATASETS_CACHE)"
)


def _hub_fix(dataset_id: str, config_name: str | None) -> str:
    call = repr(dataset_id) if not config_name else f"{dataset_id!r}, {config_name!r}"
    return _HUB_FIX.format(call=call)


def _check_hub_id(dataset_id: Any, origin: str) -> None:
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise PromptInputError(
            origin,
            f"malformed dataset id {dataset_id!r}: expected a Hub id like 'owner/name'",
        )
    parts = dataset_id.split("/")
    problem = None
    if "://" in dataset_id or dataset_id.startswith(("/", ".", "~")) or "\\" in dataset_id:
        problem = "it looks like a URL or a local path"
    elif len(parts) > 2:
        problem = "it has more than one '/'"
    elif not all(_HUB_ID_PART.fullmatch(part) for part in parts):
        problem = (
            "each part may only hold letters, digits, '-', '_' and '.', must start and end with a "
            "letter or digit and be at most 96 characters"
        )
    elif "--" in dataset_id or ".." in dataset_id:
        problem = "'--' and '..' are not allowed in Hub ids"
    if problem is not None:
        hint = ""
        if Path(dataset_id).expanduser().exists():
            hint = "; for a local file or saved dataset use load_prompts (the path option)"
        raise PromptInputError(
            origin,
            f"malformed dataset id {dataset_id!r}: {problem}; expected a Hub id like "
            f"'owner/name' (e.g. 'HuggingFaceH4/ultrafeedback_binarized'){hint}",
        )
    if len(parts) == 1 and dataset_id.lower() in _packaged_builders():
        raise PromptInputError(
            origin,
            f"{dataset_id!r} names a built-in datasets file reader, not a Hub dataset; "
            "for local files use load_prompts (the path option)",
        )


def _packaged_builders() -> set[str]:
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except Exception:  # a private name; fall back to the usual ones
        return {"arrow", "csv", "json", "parquet", "text", "pandas", "sql", "webdataset"}
    return set(_PACKAGED_DATASETS_MODULES)


def _hub_offline(datasets_module: Any) -> bool:
    """Whether Hub offline mode is on (datasets reads the variable once, at import)."""
    if getattr(getattr(datasets_module, "config", None), "HF_HUB_OFFLINE", False):
        return True
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return True
    except Exception:
        pass
    return any(
        os.environ.get(name, "").strip().upper() in _TRUE_VALUES
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _listed_names(text: str, pattern: str) -> str | None:
    """The ``[...]`` list after ``pattern`` in an error text, as ``a, b, c`` (None: not there)."""
    match = re.search(pattern + r"\s*(\[[^\]]*\])", text)
    if match is None:
        return None
    try:
        names = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return match.group(1)
    return ", ".join(str(n) for n in names) if names else "none"


def _hub_load_error(
    exc: Exception,
    dataset_id: str,
    origin: str,
    split: str,
    config_name: str | None,
    datasets_module: Any,
) -> PromptInputError:
    """Turn what ``datasets.load_dataset`` raised into a message a user can act on."""
    text = str(exc)
    said = f" (datasets said: {_first_line(exc)})"
    offline = _hub_offline(datasets_module)
    offline_note = " (offline mode is on: only the local cache is read)" if offline else ""

    if isinstance(exc, ValueError):
        if "Unknown split" in text or "Bad split" in text:
            names = _listed_names(text, r"(?:Should be one of|Available splits:)")
            advice = (
                f"available splits: {names}; pass one of them as split"
                if names
                else "pass an existing split (see the dataset page)"
            )
            return PromptInputError(
                origin, f"no split {split!r} in dataset {dataset_id!r}; {advice}"
            )
        if "Config name is missing" in text:
            names = _listed_names(text, r"available configs:")
            return PromptInputError(
                origin,
                f"dataset {dataset_id!r} has several configs and none was named; pass "
                f"config_name= one of {names or '(see the dataset page)'}",
            )
        if "configurations in the cache" in text:
            match = re.search(r"configurations in the cache:\s*([^\n]*)", text)
            names = match.group(1).strip() if match else "(see the cache)"
            return PromptInputError(
                origin,
                f"the local cache holds several configs of dataset {dataset_id!r} and none was "
                f"named{offline_note}; pass config_name= one of {names}",
            )
        if "BuilderConfig" in text and "not found" in text:
            names = _listed_names(text, r"Available:")
            listing = f"; available configs: {names}" if names else ""
            return PromptInputError(
                origin, f"no config {config_name!r} in dataset {dataset_id!r}{listing}"
            )
        if "Couldn't find cache for" in text:
            names = _listed_names(text, r"Available configs in the cache:")
            listing = f"; configs in the cache: {names}" if names else ""
            fix = _hub_fix(dataset_id, config_name)
            return PromptInputError(
                origin,
                f"config {config_name!r} of dataset {dataset_id!r} is not in the local cache"
                f"{offline_note}{listing}; to get it, {fix}",
            )

    not_found_types: tuple[type[BaseException], ...] = (ConnectionError, FileNotFoundError)
    dataset_not_found = getattr(
        getattr(datasets_module, "exceptions", None), "DatasetNotFoundError", None
    )
    data_files_not_found = getattr(
        getattr(datasets_module, "exceptions", None), "DataFilesNotFoundError", None
    )
    if isinstance(dataset_not_found, type):
        not_found_types += (dataset_not_found,)
    if isinstance(data_files_not_found, type) and isinstance(exc, data_files_not_found):
        return PromptInputError(
            origin, f"dataset {dataset_id!r} holds no data files that datasets can read{said}"
        )
    if isinstance(exc, not_found_types):
        fix = _hub_fix(dataset_id, config_name)
        if offline:
            return PromptInputError(
                origin,
                f"dataset {dataset_id!r} is not cached locally and offline mode is on "
                f"(HF_HUB_OFFLINE=1), so the Hub is not asked; to get it, {fix}{said}",
            )
        if isinstance(exc, ConnectionError):
            return PromptInputError(
                origin,
                f"could not reach the Hugging Face Hub for dataset {dataset_id!r} and it is not "
                f"cached locally; check the network (or a proxy), or {fix}{said}",
            )
        return PromptInputError(
            origin,
            f"dataset {dataset_id!r} was not found on the Hugging Face Hub nor in the local "
            "cache; check the id and revision, and for a private or gated dataset log in "
            f"(`hf auth login` or HF_TOKEN) and accept its terms{said}",
        )
    return PromptInputError(origin, f"cannot load dataset {dataset_id!r}{offline_note}{said}")
