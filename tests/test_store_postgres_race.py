"""Real processes racing on a Postgres store: the chain lock refusing a second writer (and
freed when its holder is killed), three processes taking prompts for rounds at once, and a
writer killed mid-transaction leaving nothing behind, label imports and sensor evaluations
while a round step writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from store_worker import pairs_of

from resources.chain_lock import ChainBusy
from resources.labelling import LabellingSettings
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


def label_file(path: Path, round_id: str, pairs: range, annotator: str) -> Path:
    lines = [
        {
            "pair_id": f"{round_id}-pair{i:04d}",
            "round_id": round_id,
            "choice": "AB"[i % 2],
            "annotator": annotator,
        }
        for i in pairs
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_label_imports_and_sensors_during_a_round_step(store, tmp_path):
    """A round step rewriting round-0002's pairs under the chain lock, while `auf labels import`
    processes import label files of round-0001 and a sensor process (labels_landed, next_round)
    imports the inbox: every process finishes, no lock timeout, no row twice."""
    sent_out = pairs_of("round-0001", 60)
    store.replace_round_tables("round-0001", {"pairs": sent_out})
    store.add_presentations(  # the pairs as shown to people: A is completion_a
        sent_out.select(
            "pair_id",
            "round_id",
            pl.col("completion_a").alias("shown_as_a"),
            pl.col("completion_b").alias("shown_as_b"),
            pl.lit(False).alias("swapped"),
        )
    )
    files = [
        label_file(tmp_path / "drop" / f"batch{n}.jsonl", "round-0001", range(n, 60, 3), f"a{n}")
        for n in range(3)
    ]
    inbox = [
        label_file(
            tmp_path / "labels" / "inbox" / f"inbox{n}.jsonl",
            "round-0001",
            range(20 * n, 20 * n + 20),
            f"b{n}",
        )
        for n in range(2)
    ]
    assert LabellingSettings(source="people").inbox_dir == inbox[0].parent

    step = start("round-step", store.url, tmp_path, "round-0002", 400)
    wait_for(step, "holding")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AUF_HOME": str(tmp_path),
        "AUF_STORE_URL": store.url,
        "AUF_LABEL_SETTLE_SECONDS": "0",
    }
    imports = [
        subprocess.Popen(
            [sys.executable, "-m", "auf_assets.cli", "labels", "import", str(f)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for f in files
    ]
    sensor = start("sensor", store.url, tmp_path, 3)
    try:
        outputs = [p.communicate(timeout=300)[0] for p in [*imports, sensor]]
        assert [p.returncode for p in [*imports, sensor]] == [0] * 4, outputs
        assert step.poll() is None, "the round step ended before the imports did"
    finally:
        (tmp_path / "stop-round-step").touch()
        step_out, _ = step.communicate(timeout=300)
    assert step.returncode == 0 and step_out.startswith("done"), step_out
    assert not any("timeout" in out.lower() for out in [*outputs, step_out]), outputs

    labels = store.labels_of_round("round-0001")
    assert labels.height == 60 + 40 and labels["label_id"].n_unique() == labels.height
    assert labels.select("pair_id", "labeller").n_unique() == labels.height
    imported = store.sql_for_tests("SELECT file_sha256, status FROM imported_files")
    assert imported.height == 5 and set(imported["status"]) == {"imported"}
    assert store.count_rows("pairs", "round-0002") == 400
    assert store.count_rows("labels", "round-0002") == 0
