"""Shared fixtures: an isolated home directory and tiny random models built on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_models import build_tiny_lm, with_chat_template

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture()
def auf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("AUF_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a byte-level BPE tokenizer, saved like a real checkpoint."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_chat_lm_dir(tiny_lm_dir, tmp_path_factory) -> Path:
    """The tiny Llama with a chat template (training formats conversations with it)."""
    return with_chat_template(tiny_lm_dir, tmp_path_factory.mktemp("tiny-chat-llama"))


@pytest.fixture(scope="session")
def rounds_home(tmp_path_factory, tiny_lm_dir) -> Path:
    """A home with two real rounds (tiny random models, rubric judge); treat it as read-mostly."""
    import dagster as dg
    from test_round import materialize_round

    from auf_assets.prompts import prompt_pool
    from resources.store import DuckDBStore

    home = tmp_path_factory.mktemp("rounds-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUF_HOME", str(home))
        instance = dg.DagsterInstance.ephemeral()
        assert dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
        for key in ("round-0001", "round-0002"):
            assert materialize_round(instance, key, tiny_lm_dir).success
    return home


@pytest.fixture()
def home(rounds_home, monkeypatch) -> Path:
    """`rounds_home` as the current AUF_HOME."""
    monkeypatch.setenv("AUF_HOME", str(rounds_home))
    return rounds_home


# -- a real PostgreSQL for the store's Postgres backend ------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A server URL: AUF_TEST_POSTGRES_URL if set, else a throwaway PostgreSQL from `pgserver`.

    Its data folder is a temporary folder of its own, not under pytest's base temp: another
    pytest session on the machine prunes old base temps (and the server's files with them), and
    the server's socket path must stay short."""
    url = os.environ.get("AUF_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    import shutil
    import tempfile

    import pgserver

    folder = tempfile.mkdtemp(prefix="auf-pg-")
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the test server, dropped after the test."""
    from postgres_tools import drop_database, fresh_database

    url = fresh_database(postgres_server)
    yield url
    drop_database(postgres_server, url)


@pytest.fixture(params=["duckdb", "postgres"])
def store_url(request) -> str:
    """Each store test runs on both backends: "" (the DuckDB file) or a fresh Postgres URL."""
    if request.param == "duckdb":
        return ""
    return request.getfixturevalue("postgres_url")
