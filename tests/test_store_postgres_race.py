"""Real processes racing on a Postgres store: the chain lock refusing a second writer (and
freed when its holder is killed), three processes taking prompts for rounds at once, and a
writer killed mid-transaction leaving nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from resources.chain_lock import ChainBusy
from resources.store import DuckDBStore

WORKER = Path(__file__).with_name("store_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def start(mode: str, url: str, home: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, url, str(home), *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(proc: subprocess.Popen, word: str) -> None:
    line = proc.stdout.readline()
    assert word in line, f"worker said {line!r} (exit {proc.poll()})"


@pytest.fixture()
def store(postgres_url, tmp_path, monkeypatch) -> DuckDBStore:
    monkeypatch.setenv("AUF_HOME", str(tmp_path))
    store = DuckDBStore(url=postgres_url)
    store.count_rows("prompts")  # the schema, once, before the workers start
    return store


def test_a_second_chain_writer_is_refused_naming_the_holder_until_it_dies(store, tmp_path):
    holder = start("hold-chain", store.url, tmp_path, "run abc12345 (reward_model of round-0003)")
    try:
        wait_for(holder, "holding")
        named = r"run abc12345 \(reward_model of round-0003\)"
        with pytest.raises(ChainBusy, match=named) as err, store.round_chain("a second writer"):
            pass
        assert f"pid {holder.pid}" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with store.round_chain("the next writer", wait_s=10):  # the server freed the dead one's lock
        pass


def test_three_processes_take_prompts_for_rounds_at_once(store, tmp_path):
    ids = [f"p{i:03d}" for i in range(120)]
    store.add_prompts(pl.DataFrame({"prompt_id": ids, "prompt": ids, "source": "s"}), "f")
    workers = [start("take-prompts", store.url, tmp_path, first, 3, 10) for first in (1, 2, 3)]
    for w in workers:
        out, _ = w.communicate(timeout=300)
        assert w.returncode == 0 and "done" in out
    assert store.rounds().height == 30
    assert store.shared_round_prompts().height == 0
    taken = store.sql_for_tests("SELECT prompt_id FROM round_prompts")["prompt_id"]
    assert taken.len() == 90 and taken.n_unique() == 90
    assert store.unused_prompt_count() == 30


def test_a_writer_killed_mid_transaction_leaves_nothing_half_written(store, tmp_path):
    writer = start("half-write", store.url, tmp_path)
    try:
        wait_for(writer, "inside")
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert store.count_rows("pairs") == 0
    store.replace_round("pairs", "round-0009", store.round_rows("pairs", "round-0009"))
