"""`load_hub_prompts` against the real `datasets` library and a real (temporary) offline cache.

The Hub is never reached: offline mode is on (``HF_HUB_OFFLINE=1``) and ``datasets`` reads only
its cache. The cached datasets are genuine cache entries: `datasets`' own Parquet builder writes
them (``download_and_prepare``) into the folder `datasets` computes for a Hub id
(``{cache}/{namespace}___{name}/{config}/0.0.0/{hash}``), which is where a download of that id
would have put them and where ``load_dataset(id)`` looks when the Hub cannot be asked.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from auf_assets.core.prompts import PromptInputError, load_hub_prompts, stable_prompt_id

datasets = pytest.importorskip("datasets")

CACHED_ID = "nobody-xyz/cached-prompts"

H4_TRAIN = pl.DataFrame(  # the HuggingFaceH4/ultrafeedback_binarized layout
    {
        "prompt": ["What is 2 + 2?", "Name a colour.", "What is 2 + 2?"],
        "prompt_id": ["h1", "h2", "h1"],
        "chosen": [
            [{"role": "user", "content": q}, {"role": "assistant", "content": "a"}]
            for q in ("What is 2 + 2?", "Name a colour.", "What is 2 + 2?")
        ],
        "messages": [
            [{"role": "user", "content": q}, {"role": "assistant", "content": "a"}]
            for q in ("What is 2 + 2?", "Name a colour.", "What is 2 + 2?")
        ],
    }
)
H4_TEST = pl.DataFrame({"prompt": ["Held out?"], "prompt_id": ["t1"]})
UF_TRAIN = pl.DataFrame(  # the openbmb/UltraFeedback layout
    {
        "source": ["evol_instruct", "sharegpt", "ultrachat"],
        "instruction": ["Explain recursion.", "Write a haiku.", "Plan a trip."],
        "models": [["m1", "m2"], ["m1"], ["m2"]],
    }
)
CHAT_TRAIN = pl.DataFrame(
    {
        "messages": [
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
            ],
            [{"role": "user", "content": "Say hi."}],
        ]
    }
)


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty datasets cache, offline mode on (datasets reads both settings at import)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_hub_dataset(
    cache: Path, repo_id: str, splits: dict[str, pl.DataFrame], *, config_name: str = "default"
) -> Path:
    """Write ``splits`` into ``cache`` as `datasets` caches the Hub dataset ``repo_id``."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    name = repo_id.split("/")[-1]
    source = cache.parent / "parquet-sources" / repo_id / config_name
    source.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, frame in splits.items():
        files[split] = str(source / f"{split}.parquet")
        frame.write_parquet(files[split])
    # the folder datasets itself computes for this Hub id (what a download would write) ...
    target = Parquet(
        cache_dir=str(cache),
        dataset_name=name,
        repo_id=repo_id,
        config_name=config_name,
        hash="0123456789abcdef0123456789abcdef01234567",  # a Hub commit sha in real life
    ).cache_dir
    # ... filled by datasets' own Parquet builder from local files
    builder = Parquet(
        cache_dir=str(cache.parent / "scratch"),
        dataset_name=name,
        config_name=config_name,
        data_files=files,
    )
    builder.download_and_prepare(output_dir=target)
    assert (Path(target) / "dataset_info.json").is_file()
    return Path(target)


def message_of(excinfo) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------------------------------------
# not cached while offline


def test_uncached_dataset_offline_says_so_and_how_to_fix(hub_cache):
    dataset_id = "nobody-xyz/not-cached-prompts"
    with pytest.raises(PromptInputError) as info:
        load_hub_prompts(dataset_id)
    message = message_of(info)
    for part in (
        "hf://datasets/nobody-xyz/not-cached-prompts split=train: ",
        "'nobody-xyz/not-cached-prompts' is not cached locally",
        "offline mode is on (HF_HUB_OFFLINE=1)",
        "network",
        "HF_HUB_OFFLINE=0",
        "datasets.load_dataset('nobody-xyz/not-cached-prompts')",
        "HF_DATASETS_CACHE",
    ):
        assert part in message, f"{part!r} not in {message!r}"
    assert info.value.origin.startswith("hf://datasets/nobody-xyz/not-cached-prompts")
    # datasets' own error stays attached as the cause
    assert isinstance(info.value.__cause__, ConnectionError)


def test_uncached_while_another_dataset_is_cached(hub_cache):
    cache_hub_dataset(hub_cache, CACHED_ID, {"train": UF_TRAIN})
    with pytest.raises(PromptInputError, match=r"not cached locally and offline mode is on"):
        load_hub_prompts("nobody-xyz/cached-prompts-other")


# ---------------------------------------------------------------------------------------------
# cached datasets: layouts, splits, configs


def test_cached_h4_layout_by_split(hub_cache):
    cache_hub_dataset(hub_cache, CACHED_ID, {"train_prefs": H4_TRAIN, "test_prefs": H4_TEST})
    batch = load_hub_prompts(CACHED_ID, split="train_prefs")
    assert batch.prompts.columns == ["prompt_id", "prompt", "source"]
    assert batch.prompts["prompt"].to_list() == ["What is 2 + 2?", "Name a colour."]
    assert batch.prompts["prompt_id"].to_list() == ["h1", "h2"]
    assert batch.prompts["source"].to_list() == [CACHED_ID, CACHED_ID]  # no source column
    assert batch.duplicates == [{"row": 3, "prompt_id": "h1", "duplicate_of_row": 1}]
    assert batch.origin == "hf://datasets/nobody-xyz/cached-prompts split=train_prefs"
    assert batch.summary().startswith("2 prompts from hf://datasets/nobody-xyz/cached-prompts")

    test = load_hub_prompts(CACHED_ID, split="test_prefs", default_source="general")
    assert test.prompts["prompt"].to_list() == ["Held out?"]
    assert test.prompts["source"].to_list() == ["general"]


def test_cached_default_split_missing_lists_the_splits(hub_cache):
    cache_hub_dataset(hub_cache, CACHED_ID, {"train_prefs": H4_TRAIN, "test_prefs": H4_TEST})
    with pytest.raises(PromptInputError) as info:
        load_hub_prompts(CACHED_ID)
    message = message_of(info)
    assert "no split 'train' in dataset 'nobody-xyz/cached-prompts'" in message
    assert "available splits: train_prefs, test_prefs" in message
    assert "pass one of them as split" in message
    with pytest.raises(PromptInputError, match=r"no split 'dev'.*train_prefs, test_prefs"):
        load_hub_prompts(CACHED_ID, split="dev")


def test_cached_instruction_layout_with_source_and_limit(hub_cache):
    cache_hub_dataset(hub_cache, CACHED_ID, {"train": UF_TRAIN})
    batch = load_hub_prompts(CACHED_ID, limit=2)
    assert batch.prompts["prompt"].to_list() == ["Explain recursion.", "Write a haiku."]
    assert batch.prompts["source"].to_list() == ["evol_instruct", "sharegpt"]
    assert batch.prompts["prompt_id"].to_list() == [
        stable_prompt_id("Explain recursion."),
        stable_prompt_id("Write a haiku."),
    ]


def test_cached_messages_layout_and_explicit_column(hub_cache):
    cache_hub_dataset(hub_cache, CACHED_ID, {"train": CHAT_TRAIN})
    batch = load_hub_prompts(CACHED_ID)
    assert batch.prompts["prompt"].to_list() == ["Capital of France?", "Say hi."]
    explicit = load_hub_prompts(CACHED_ID, prompt_column="messages")
    assert explicit.prompts["prompt"].to_list() == ["Capital of France?", "Say hi."]
    with pytest.raises(PromptInputError, match=r"no prompt column 'prompt' \(columns found: 'mes"):
        load_hub_prompts(CACHED_ID, prompt_column="prompt")


def test_cached_configs_missing_name_and_unknown_name(hub_cache):
    cache_hub_dataset(hub_cache, CACHED_ID, {"train": UF_TRAIN}, config_name="uf")
    cache_hub_dataset(hub_cache, CACHED_ID, {"train": CHAT_TRAIN}, config_name="chat")

    with pytest.raises(PromptInputError) as info:
        load_hub_prompts(CACHED_ID)
    message = message_of(info)
    assert "several configs" in message and "none was named" in message
    assert "config_name=" in message and "uf" in message and "chat" in message

    batch = load_hub_prompts(CACHED_ID, config_name="chat", revision="main")
    assert batch.prompts["prompt"].to_list() == ["Capital of France?", "Say hi."]
    assert batch.origin == "hf://datasets/nobody-xyz/cached-prompts:chat split=train@main"
    uf = load_hub_prompts(CACHED_ID, config_name="uf")
    assert uf.prompts["source"].to_list() == ["evol_instruct", "sharegpt", "ultrachat"]

    with pytest.raises(PromptInputError) as info:
        load_hub_prompts(CACHED_ID, config_name="nope")
    message = message_of(info)
    assert "config 'nope'" in message and "not in the local cache" in message
    assert "offline mode is on" in message
    assert "configs in the cache: chat, uf" in message
    assert "datasets.load_dataset('nobody-xyz/cached-prompts', 'nope')" in message


# ---------------------------------------------------------------------------------------------
# malformed ids never reach datasets


@pytest.mark.parametrize(
    ("dataset_id", "expected"),
    [
        ("", "malformed dataset id"),
        ("a/b/c", "more than one '/'"),
        ("/tmp/prompts", "local path"),
        ("./prompts", "local path"),
        ("hf://datasets/owner/name", "URL"),
        ("https://huggingface.co/datasets/owner/name", "URL"),
        ("owner/bad name", "letters, digits"),
        ("-owner/name", "letters, digits"),
        ("owner/name-", "letters, digits"),
        ("owner/na--me", "'--'"),
        ("json", "built-in datasets file reader"),
    ],
)
def test_malformed_id(monkeypatch, dataset_id, expected):
    def must_not_be_called(*args, **kwargs):
        raise AssertionError("datasets.load_dataset was called for a malformed id")

    monkeypatch.setattr(datasets, "load_dataset", must_not_be_called)
    with pytest.raises(PromptInputError) as info:
        load_hub_prompts(dataset_id)
    assert expected in message_of(info)


def test_local_path_given_as_id_points_to_load_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool.jsonl").write_text('{"prompt": "a"}\n', encoding="utf-8")
    with pytest.raises(PromptInputError, match=r"use load_prompts"):
        load_hub_prompts(str(tmp_path / "pool.jsonl"))


# ---------------------------------------------------------------------------------------------
# what load_dataset is called with, and errors that need the Hub (simulated)


def test_arguments_passed_to_load_dataset(monkeypatch):
    """``datasets.load_dataset`` is replaced by a recorder returning a real in-memory Dataset."""
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_dict({"instruction": ["Hi?"], "dataset": ["koala"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    batch = load_hub_prompts(
        "tatsu-lab/alpaca_eval", split="eval", config_name="alpaca_eval", revision="abc123"
    )
    assert calls == [
        (
            "tatsu-lab/alpaca_eval",
            {"name": "alpaca_eval", "split": "eval", "revision": "abc123"},
        )
    ]
    assert batch.prompts["prompt"].to_list() == ["Hi?"]
    assert batch.prompts["source"].to_list() == ["koala"]  # 'dataset' column as the source
    assert batch.origin == "hf://datasets/tatsu-lab/alpaca_eval:alpaca_eval split=eval@abc123"

    calls.clear()
    load_hub_prompts("tatsu-lab/alpaca_eval")
    assert calls == [("tatsu-lab/alpaca_eval", {"name": None, "split": "train", "revision": None})]


def raising(exc: Exception):
    def fake_load_dataset(*args, **kwargs):
        raise exc

    return fake_load_dataset


@pytest.fixture()
def online(monkeypatch):
    """Pretend offline mode is off (the Hub itself is still never asked: load_dataset is faked)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize(
    ("exc", "kwargs", "parts"),
    [
        (
            # the messages below are the ones datasets 5.2 raises (datasets/load.py, builder.py)
            datasets.exceptions.DatasetNotFoundError(
                "Dataset 'owner/name' doesn't exist on the Hub or cannot be accessed."
            ),
            {},
            ["not found on the Hugging Face Hub nor in the local cache", "gated", "HF_TOKEN"],
        ),
        (
            ConnectionError("Couldn't reach 'owner/name' on the Hub (ConnectError)"),
            {},
            ["could not reach the Hugging Face Hub", "not cached locally"],
        ),
        (
            ValueError(
                "Config name is missing.\nPlease pick one among the available configs: "
                "['alpaca_eval', 'alpaca_eval_gpt4']\nExample of usage:\n\t`load_dataset(...)`"
            ),
            {},
            ["several configs", "config_name= one of alpaca_eval, alpaca_eval_gpt4"],
        ),
        (
            ValueError("BuilderConfig 'zzz' not found. Available: ['default', 'extra']"),
            {"config_name": "zzz"},
            ["no config 'zzz'", "available configs: default, extra"],
        ),
        (
            ValueError("Bad split: dev. Available splits: ['train_prefs', 'test_prefs']"),
            {},
            ["no split 'train'", "available splits: train_prefs, test_prefs"],
        ),
        (
            RuntimeError("Dataset scripts are no longer supported, but found name.py"),
            {},
            ["cannot load dataset 'owner/name'", "RuntimeError: Dataset scripts"],
        ),
    ],
)
def test_hub_errors_become_prompt_input_errors(online, monkeypatch, exc, kwargs, parts):
    """``datasets.load_dataset`` is replaced: these failures need the Hub to happen for real."""
    monkeypatch.setattr(datasets, "load_dataset", raising(exc))
    with pytest.raises(PromptInputError) as info:
        load_hub_prompts("owner/name", **kwargs)
    message = message_of(info)
    assert message.startswith("hf://datasets/owner/name")
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert info.value.__cause__ is exc


def test_prompt_pool_asset_ingests_a_cached_hub_dataset(hub_cache, auf_home):
    import dagster as dg

    from auf_assets.prompts import prompt_pool
    from resources.store import DuckDBStore

    cache_hub_dataset(hub_cache, CACHED_ID, {"train_prefs": H4_TRAIN, "test_prefs": H4_TEST})
    store = DuckDBStore()
    config = {"dataset": CACHED_ID, "split": "train_prefs"}
    result = dg.materialize(
        [prompt_pool],
        resources={"store": store},
        run_config={"ops": {"prompt_pool": {"config": config}}},
    )
    meta = result.asset_materializations_for_node("prompt_pool")[0].metadata
    assert meta["new_prompts"].value == 2
    assert meta["origin"].value == f"hf://datasets/{CACHED_ID} split=train_prefs"
    assert store.sql_for_tests("SELECT prompt FROM prompts ORDER BY prompt")[
        "prompt"
    ].to_list() == [
        "Name a colour.",
        "What is 2 + 2?",
    ]
    with pytest.raises(dg.Failure, match="not cached"):
        dg.materialize(
            [prompt_pool],
            resources={"store": store},
            run_config={"ops": {"prompt_pool": {"config": {"dataset": "nobody-xyz/elsewhere"}}}},
        )
    assert store.count_rows("prompts") == 2  # nothing lost
