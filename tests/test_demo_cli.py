"""`auf demo` as a person runs it: real processes, a tiny random model, a home in a tmp dir.

- People label from the command line: the first call writes the annotation batch and exits 0,
  a call while labels are missing runs nothing, and after `auf labels import` the next call
  trains the labelled round and writes the next round's batch.
- The console: stage lines and the log file's path by default, no Dagster DEBUG lines; the log
  file (and the run in the Dagster instance) keep every event; `--verbose` prints them.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import duckdb
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROMPTS = 3  # per round: one pair each


def tiny_config(model_dir: Path) -> dict:
    model = str(model_dir)
    members = [
        {"name": f"tiny-{t}", "model": model, "temperature": t, "max_new_tokens": 6}
        for t in (0.0, 1.0)
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
                "config": {"n_heads": 2, "hidden": [8], "lr": 0.01, "max_steps": 3}
            },
        },
        "ops": {
            "round_prompts": {"config": {"batch_size": PROMPTS}},
            "completions": {"config": {"members": members}},
        },
    }


@pytest.fixture()
def demo_home(tmp_path, tiny_lm_dir) -> tuple[Path, Path]:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_lm_dir)))
    return tmp_path / "home", config


def auf(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AUF_", "DAGSTER_"))}
    clean.update(
        AUF_HOME=str(home),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        COLUMNS="120",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "auf_assets.cli", *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc.stdout


def log_file(stdout: str) -> Path:
    match = re.search(r"^full logs: (\S+)", stdout, re.MULTILINE)
    assert match, stdout
    return Path(match.group(1))


def query(home: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(home / "auf.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def write_labels(path: Path, pairs: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for k, pair in enumerate(pairs):
            choice = "AB"[k % 2]
            out.write(json.dumps({"pair_id": pair["pair_id"], "choice": choice}) + "\n")
    return path


@pytest.mark.process
def test_people_label_between_two_auf_demo_calls(demo_home, tmp_path):
    home, config = demo_home
    people = {"AUF_LABEL_SOURCE": "people"}

    # 1. The first call runs the round up to the annotation batch and says what to do.
    first = ok(auf(home, "demo", "--config", str(config), **people))
    outbox, inbox = home / "labels" / "outbox", home / "labels" / "inbox"
    batch = [outbox / f"round-0001.{ext}" for ext in ("jsonl", "csv", "labelstudio.json")]
    for path in batch:
        assert path.is_file()
        assert str(path) in first
    assert "== round-0001: selecting pairs for people to label" in first
    assert "0/3 pairs labelled" in first
    assert "auf labels import FILE" in first and str(inbox) in first
    assert query(home, "SELECT count(*) FROM reward_models") == [(0,)]
    pairs = [json.loads(line) for line in batch[0].read_text().splitlines()]
    assert len(pairs) == PROMPTS

    # 2. Labels still missing: progress, exit 0, no run at all.
    ok(auf(home, "labels", "import", str(write_labels(tmp_path / "a.jsonl", pairs[:1])), **people))
    waiting = ok(auf(home, "demo", "--config", str(config), **people))
    assert "round-0001 waits for its labels: 1/3 pairs labelled" in waiting
    assert "== " not in waiting
    assert "RUN_START" not in log_file(waiting).read_text()

    # 3. The rest comes back: the next call trains round-0001 and writes round-0002's batch.
    imported = ok(
        auf(home, "labels", "import", str(write_labels(tmp_path / "b.jsonl", pairs)), **people)
    )
    assert "round-0001 can be trained now: run `auf demo`" in imported
    second = ok(auf(home, "demo", "--config", str(config), **people))
    assert "== round-0001: training on the labels (all 3 pairs labelled)" in second
    assert "== round-0002: selecting pairs for people to label" in second
    assert "round-0002 waits for its labels: 0/3 pairs labelled" in second
    assert second.index("round-0001: training") < second.index("round-0002: selecting")
    assert query(home, "SELECT round_id, pairs_trained FROM reward_models") == [
        ("round-0001", PROMPTS)
    ]
    assert query(
        home, "SELECT count(*), min(source) FROM judgements WHERE round_id = 'round-0001'"
    ) == [(PROMPTS, "people")]
    assert (outbox / "round-0002.jsonl").is_file()
    assert str(outbox / "round-0002.jsonl") in second
    assert query(home, "SELECT count(*) FROM pairs WHERE round_id = 'round-0002'") == [(PROMPTS,)]


@pytest.mark.process
def test_the_console_shows_stages_and_the_log_keeps_everything(demo_home):
    home, config = demo_home
    proc = auf(home, "demo", "--config", str(config))
    out = ok(proc)
    assert not re.search(r"\bDEBUG\b", out + proc.stderr)
    assert "PreviewWarning" not in out + proc.stderr
    assert "Loading weights" not in out + proc.stderr
    assert "\r" not in out  # not a terminal: plain lines only
    for pattern in (
        r"^  round_prompts +\d+\.\ds  3 prompts",
        r"^  completions +\d+\.\ds  6 responses",
        r"^  response_features +\d+\.\ds  6 encoded",
        r"^  selected_pairs +\d+\.\ds  3 pairs by ",
        r"^  judgements +\d+\.\ds  3 labelled pairs .*, 24 judge calls",
        r"^  reward_model +\d+\.\ds  loss \d\.\d{4} -> \d\.\d{4}",
        r"^round-0001: 6 responses .*wall time",
    ):
        assert re.search(pattern, out, re.MULTILINE), (pattern, out)
    log = log_file(out)
    assert log.parent == home / "logs" and re.fullmatch(r"demo-\d{8}-\d{6}(-\d+)?\.log", log.name)
    assert f"Full logs: {log}" in out
    text = log.read_text()
    assert " - dagster - DEBUG - " in text and "STEP_START" in text and "RUN_SUCCESS" in text
    assert "generating 3 responses with tiny-0.0" in text
    assert "PreviewWarning" in text  # kept off the console, not lost

    # The run in the Dagster instance keeps its full event log (the UI shows it).
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    try:
        run = instance.get_runs(filters=dg.RunsFilter(job_name="active_round"), limit=1)[0]
        events = {
            e.dagster_event.event_type_value
            for e in instance.all_logs(run.run_id)
            if e.is_dagster_event
        }
        assert {"STEP_START", "STEP_SUCCESS", "ASSET_MATERIALIZATION"} <= events
    finally:
        instance.dispose()

    # --verbose: Dagster's lines on the console too, stage lines still there.
    verbose = ok(auf(home, "demo", "--config", str(config), "--verbose"))
    assert re.search(r" - dagster - DEBUG - active_round - .* - STEP_START - ", verbose)
    assert re.search(r"^  reward_model +\d+\.\ds  loss", verbose, re.MULTILINE)
    assert "round-0002: 6 responses" in verbose


# -- the console object itself (no process) --------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_line_on_a_terminal_and_spaced_lines_elsewhere(tmp_path):
    from auf_assets.cli import console

    tty = console.RunConsole(tmp_path / "a.log", verbose=False, stream=_Terminal())
    tty._stage("completions")
    tty.progress("tiny-0.0", 2, 4)
    tty.say("a line")
    tty.close()
    shown = tty.out.getvalue()
    assert "\r\x1b[K  completions" in shown
    assert "[##########..........] 2/4 responses by tiny-0.0" in shown
    assert "a line\n" in shown

    clock = [100.0]
    plain = console.RunConsole(
        tmp_path / "b.log", verbose=False, stream=io.StringIO(), clock=lambda: clock[0]
    )
    plain._stage("judgements")
    for done in range(1, 9):
        plain.progress("judge calls", done, 32)
        clock[0] += 1.0
    plain.close()
    lines = plain.out.getvalue().splitlines()
    assert lines == ["  judgements: 1/32 judge calls", "  judgements: 6/32 judge calls"]
    assert "\r" not in plain.out.getvalue()


def test_noisy_warnings_go_to_the_log_file_only(tmp_path, capsys):
    from dagster_shared.utils.warnings import PreviewWarning

    from auf_assets.cli.console import job_console

    with job_console(tmp_path, "demo") as console, warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a preview feature", PreviewWarning, stacklevel=1)
        warnings.warn("something a person should see", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "a preview feature" not in err
    assert "something a person should see" in err
    text = console.log_path.read_text()
    assert "a preview feature" in text and "something a person should see" in text
    assert console.log_path.parent == tmp_path / "logs"


@pytest.mark.process
def test_auf_demo_with_a_policy_method_runs_the_policy_loop(
    tmp_path, tiny_lm_dir, tiny_chat_lm_dir
):
    config = tiny_config(tiny_lm_dir)
    config["resources"]["training"] = {
        "config": {
            "base_model": str(tiny_chat_lm_dir),
            "device": "cpu",
            "batch_size": 2,
            "lora_r": 4,
            "lora_alpha": 8,
            "learning_rate": 0.05,
            "max_length": 256,
            "test_fraction": 0.0,
        }
    }
    config["ops"]["dpo_policy"] = {"config": {"max_steps": 2}}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(config))
    home = tmp_path / "home"
    out = ok(auf(home, "demo", "--config", str(path), "--method", "sharp", "--rounds", "2"))
    assert "(the DPO policy selects)" in out
    assert "no DPO step yet: the policy is the reference" in out
    assert re.search(
        r"^  policy_logprobs +\d+\.\ds  6 responses scored by the policy of base", out, re.M
    )
    assert re.search(
        r"^  policy_logprobs .* of round-0001 \(reference: 6 new, 0 cached\)", out, re.M
    )
    assert re.search(r"^  dpo_policy +\d+\.\ds  2 DPO steps on 3 pairs", out, re.MULTILINE), out
    assert "mean implicit-reward margin of the selected pairs" in out  # round 2 selects with it
    rows = query(home, "SELECT round_id, method, fallback FROM pairs ORDER BY round_id")
    assert {(m, f) for r, m, f in rows if r == "round-0001"} == {("sharp", "random")}
    assert {(m, f) for r, m, f in rows if r == "round-0002"} == {("sharp", None)}
    assert "pairs picked by random instead of sharp (no DPO step yet" in out
    # the warm start of the job's defaults survived the user's dpo_policy config
    assert query(home, "SELECT count(*) FROM trained_checkpoints WHERE kind = 'dpo_policy'") == [
        (2,)
    ]


@pytest.mark.process
def test_auf_demo_refuses_a_method_a_round_cannot_run(tmp_path):
    home = tmp_path / "home"
    for method, says in (
        ("nope", "unknown selection method 'nope'; known: random, ultrafeedback"),
        ("maxmin", "maxmin is an oracle method"),
    ):
        proc = auf(home, "demo", "--method", method)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert says in proc.stderr and "sharp" in proc.stderr
        assert "== prompt pool" not in proc.stdout  # refused before any run


@pytest.mark.process
def test_judge_and_people_between_two_auf_demo_calls(demo_home, tmp_path):
    """judge+people: the judge screens the pairs, only the least sure (and a calibration pair)
    go out, and the second call trains on people's and the judge's verdicts together."""
    home, config = demo_home
    mixed = {
        "AUF_LABEL_SOURCE": "judge+people",
        "AUF_LABEL_PEOPLE_THRESHOLD": "0",
        "AUF_LABEL_PEOPLE_BUDGET": "1",
        "AUF_LABEL_CALIBRATION_SHARE": "0.01",
    }
    first = ok(auf(home, "demo", "--config", str(config), **mixed))
    assert re.search(
        r"judge_screening .*3 pairs judged: 1 unsure and 1 for calibration go to people", first
    )
    assert "0/2 pairs labelled" in first
    sent = (home / "labels" / "outbox" / "round-0001.jsonl").read_text().splitlines()
    pairs = [json.loads(line) for line in sent]
    assert len(pairs) == 2
    ok(auf(home, "labels", "import", str(write_labels(tmp_path / "l.jsonl", pairs)), **mixed))
    second = ok(auf(home, "demo", "--config", str(config), **mixed))
    assert "== round-0001: training on the labels (all 2 pairs labelled)" in second
    sources = query(
        home,
        "SELECT source, count(*) FROM judgements WHERE round_id = 'round-0001' "
        "GROUP BY source ORDER BY source",
    )
    assert sources == [("llm_judge", 1), ("people", 2)]
    assert query(home, "SELECT pairs_trained FROM reward_models") == [(PROMPTS,)]
    status = ok(auf(home, "labels", "status", **mixed))
    assert "judge vs people" in status
