"""A round killed half-way and run again ends exactly like a round that was never interrupted.

Real processes: `auf demo --config <tiny model>` is started, SIGKILLed as soon as its log shows a
given asset at work, and started again (the demo resumes a round whose reward_model never
materialised). Its store is then compared, table by table, with the store of an uninterrupted
run with the same seed in another home directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# table -> the columns that must match (timestamps and feature file names legitimately differ)
COMPARED = {
    "rounds": "round_id, round_index",
    "round_prompts": "round_id, prompt_id, position",
    "completions": "completion_id, round_id, prompt_id, member, response, finish_reason",
    "features": "completion_id, encoder, dim",
    "reward_scores": "round_id, completion_id, reward_model_round, mu, sigma",
    "pairs": "pair_id, round_id, prompt_id, completion_a, completion_b, method, mu_a, mu_b",
    "judge_scores": "round_id, completion_id, aspect, judge, score, failed, attempts",
    "judgements": "pair_id, round_id, preference, score_a, score_b, chosen_completion_id, "
    "rejected_completion_id, labeller, source, n_labels",
    "reward_models": "round_id, encoder, pairs_trained, prompts_done, loss_before, loss_after",
}


def run_config(model_dir: Path) -> dict:
    model = str(model_dir)
    members = [
        {"name": f"tiny-{t}", "model": model, "temperature": t, "max_new_tokens": 8}
        for t in (0.0, 0.8, 1.2)
    ]
    return {
        "resources": {
            "engine": {"config": {"device": "cpu", "batch_size": 4}},
            "encoder": {
                "config": {
                    "encoder": f"{model}+text-stats",
                    "pooling": "last",
                    "device": "cpu",
                    "max_length": 64,
                }
            },
            "judge": {"config": {"model": model, "device": "cpu", "top_k": 1000}},
            "uncertainty_model": {
                "config": {"n_heads": 4, "hidden": [16, 16], "lr": 0.01, "max_steps": 5}
            },
        },
        "ops": {
            "round_prompts": {"config": {"batch_size": 4}},
            "completions": {"config": {"members": members}},
        },
    }


def start_demo(home: Path, config: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "AUF_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    env.pop("DAGSTER_HOME", None)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "auf_assets.cli", "demo", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def kill_when_logged(proc: subprocess.Popen, log: Path, needle: str, timeout: float = 240) -> None:
    """SIGKILL `proc` as soon as `needle` shows up in its log (fails if it ends first)."""
    seen = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace")[seen:]:
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            return
        if proc.poll() is not None:
            pytest.fail(f"the demo ended (rc {proc.returncode}) before logging {needle!r}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no {needle!r} in the log within {timeout}s")


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, log.read_text(errors="replace")[-3000:]


def snapshot(home: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(home / "auf.duckdb"), read_only=True)
    try:
        out = {}
        for table, columns in COMPARED.items():
            rows = con.execute(f"SELECT {columns} FROM {table} ORDER BY ALL").fetchall()
            out[table] = [
                tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows
            ]
        return out
    finally:
        con.close()


@pytest.mark.process
def test_a_killed_round_resumes_to_the_same_store(tmp_path, tiny_lm_dir):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(run_config(tiny_lm_dir)))
    reference_home, killed_home = tmp_path / "reference", tmp_path / "killed"
    reference_log, killed_log = tmp_path / "reference.log", tmp_path / "killed.log"

    reference = start_demo(reference_home, config, reference_log)
    # Killed in the middle of generating (completions) ...
    kill_when_logged(start_demo(killed_home, config, killed_log), killed_log, "generating")
    # ... then again in the middle of judging, after every earlier asset re-ran ...
    kill_when_logged(start_demo(killed_home, config, killed_log), killed_log, "judging")
    # ... and finally left to finish.
    finish(start_demo(killed_home, config, killed_log), killed_log)
    finish(reference, reference_log)

    expected, got = snapshot(reference_home), snapshot(killed_home)
    assert expected["rounds"] == [("round-0001", 1)]
    assert len(expected["pairs"]) == len(expected["judgements"]) == 4
    for table in COMPARED:
        assert got[table] == expected[table], table
    # The resumed runs reused the round: the kill left no second round behind.
    assert killed_log.read_text().count("== round-0001: running the active round") == 3
    assert "round-0002" not in killed_log.read_text()
