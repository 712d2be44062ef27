"""The Postgres server killed and started again, on a server of these tests' own (the session's
server is shared by every other test): the store reconnects by itself, and a round whose server
dies in the middle of a step fails naming the server, then completes when run again with the
first attempt's finished work kept."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import dagster as dg
import pytest
from postgres_tools import OwnServer, drop_database, fresh_database
from test_round import materialize_round, tiny_resources, tiny_run_config

from auf_assets.checks import ROUND_CHECKS
from auf_assets.prompts import prompt_pool
from auf_assets.round import ROUND_ASSETS
from resources import GenerationEngine
from resources.store import DuckDBStore
from resources.store.postgres import WAIT_ENV, redact

# The servers the engine below may kill, by data directory (a resource's config is plain data).
_servers: dict[str, OwnServer] = {}


class EngineThatKillsTheServer(GenerationEngine):
    """The real engine, which kills the store's server right after generating for the pool
    member sampled at `kill_after_temperature`, before that member's responses are saved: the
    server dies in the middle of the completions step, as a crash or an eviction would do it."""

    pgdata: str
    kill_after_temperature: float

    def generate(self, model, conversations, **kwargs):
        generations = super().generate(model, conversations, **kwargs)
        if kwargs["temperature"] == self.kill_after_temperature:
            _servers[self.pgdata].kill()
        return generations


@pytest.fixture(scope="module")
def own_server():
    # A folder of its own under the system temp (as the session server's): pytest's base temp
    # is private to root, and the server may run as another user.
    folder = Path(tempfile.mkdtemp(prefix="auf-pg-own-"))
    pgdata = folder / "pgdata"
    server = OwnServer(pgdata)
    _servers[str(pgdata)] = server
    try:
        yield server
    finally:
        _servers.pop(str(pgdata))
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def own_url(own_server, tmp_path, monkeypatch):
    """A fresh database on the test's own server (started again if a test left it down)."""
    own_server.start()
    monkeypatch.setenv("AUF_HOME", str(tmp_path))
    monkeypatch.setenv(WAIT_ENV, "5")  # a dead server fails a step in seconds, not a minute
    url = fresh_database(own_server.url)
    yield url
    own_server.start()
    drop_database(own_server.url, url)


def test_the_store_reconnects_after_the_server_restarts(own_server, own_url):
    store = DuckDBStore(url=own_url)
    assert store.count_rows("prompts") == 0  # leaves a connection idle in the pool
    own_server.kill()
    own_server.start()
    assert store.count_rows("prompts") == 0  # the dead idle connection is replaced


def test_a_server_killed_mid_round_fails_the_step_naming_it_and_the_rerun_keeps_the_work(
    own_server, own_url, monkeypatch, tiny_lm_dir
):
    monkeypatch.setenv("AUF_STORE_URL", own_url)
    monkeypatch.setenv("PGPASSWORD", "s3cret-never-shown")
    store = DuckDBStore()
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": store}).success
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    killer = EngineThatKillsTheServer(
        device="cpu",
        batch_size=4,
        pgdata=str(own_server.pgdata),
        kill_after_temperature=0.8,  # the second of the three members
    )
    first = dg.materialize(
        [*ROUND_ASSETS, *ROUND_CHECKS],
        instance=instance,
        partition_key="round-0001",
        resources={**tiny_resources(tiny_lm_dir), "engine": killer},
        run_config=tiny_run_config(tiny_lm_dir),
        raise_on_error=False,
    )
    assert not first.success
    failures = first.get_step_failure_events()
    assert [f.step_key for f in failures] == ["completions"]
    message = failures[0].step_failure_data.error.to_string()
    assert redact(own_url) in message and "Postgres store" in message
    assert "s3cret" not in message

    own_server.start()
    # The first member's responses were saved before the server died; nothing of the second.
    assert store.count_rows("completions") == 0
    cached = store.sql_for_tests("SELECT key FROM call_cache WHERE step = 'completions'")
    assert cached.height == 4
    prompts_first = set(store.round_rows("round_prompts", "round-0001")["prompt_id"])

    second = materialize_round(instance, "round-0001", tiny_lm_dir)
    assert second.success
    assert store.count_rows("completions", "round-0001") == 12  # 4 prompts x 3 members
    assert store.count_rows("judgements", "round-0001") == 4
    assert set(store.round_rows("round_prompts", "round-0001")["prompt_id"]) == prompts_first
    usage = store.usage(["round-0001"]).filter(step="completions", run_id=second.run_id)
    rerun = usage.select("actor", "cached").sort("actor").rows()
    assert rerun == [("tiny-0.0", 4), ("tiny-0.8", 0), ("tiny-1.2", 0)]
    assert store.sql_for_tests("SELECT count(*) AS n FROM call_cache")["n"][0] == 0
