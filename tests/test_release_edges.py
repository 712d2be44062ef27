"""The edges of publishing a person meets first: no token, a Hub that never answers, a malformed
endpoint, and the `auf export` / `auf publish` command line (one clear line, arguments checked
before any work, runs that look like the UI's)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from fake_hub import FakeHub, SilentHub

from auf_assets.release import PreferenceDatasetConfig, build_release, hub_dataset
from resources.engine import GenerationEngine
from resources.hub import HubDataset, HubError
from resources.store import DuckDBStore

TOKEN = "hf_SENTINEL_edges_1234567890abcdef"


def _failure(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            return event.step_failure_data.error.message
    return ""


@pytest.fixture()
def no_token(monkeypatch, tmp_path):
    """No HF_TOKEN and no `hf auth login` token file."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored"))


def test_hub_dataset_without_a_token_fails_in_its_step_with_one_sentence(
    home, monkeypatch, no_token
):
    from auf_assets.definitions import default_resources

    monkeypatch.setenv("AUF_HUB_REPO", "me/prefs")
    build_release(DuckDBStore(), PreferenceDatasetConfig(), log=lambda _: None)
    # the resource exactly as the code location (the UI) configures it
    hub = default_resources()["hub"]
    result = dg.materialize(
        [hub_dataset], resources={"store": DuckDBStore(), "hub": hub}, raise_on_error=False
    )
    assert not result.success
    message = _failure(result).strip()
    assert message.endswith(
        "no Hugging Face token: set the HF_TOKEN environment variable to a token with write "
        "access (huggingface.co/settings/tokens); nothing was sent"
    )
    assert "DagsterInvalidConfigError" not in message and message.count("\n") == 0


def test_a_hub_that_never_answers_times_out_is_retried_and_fails_naming_the_endpoint(home):
    from huggingface_hub.utils import get_session

    build_release(DuckDBStore(), PreferenceDatasetConfig(), log=lambda _: None)
    before = get_session().timeout
    with SilentHub() as silent:
        hub = HubDataset(
            repo_id="me/prefs",
            token=TOKEN,
            endpoint=silent.url,
            max_retries=2,
            retry_backoff_s=0.01,
            connect_timeout_s=2.0,
            read_timeout_s=0.3,
        )
        instance = dg.DagsterInstance.ephemeral()
        started = time.monotonic()
        result = dg.materialize(
            [hub_dataset],
            instance=instance,
            resources={"store": DuckDBStore(), "hub": hub},
            raise_on_error=False,
        )
        elapsed = time.monotonic() - started
    assert not result.success
    assert (
        f"could not create the repository on {silent.url} after 3 tries (no answer within 0.3 s)"
        in _failure(result)
    )
    assert silent.requests == ["POST /api/repos/create HTTP/1.1"] * 3  # retried like a 5xx
    assert elapsed < 15
    logged = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("no answer within 0.3 s): try 2 of 3" in m for m in logged)  # not silent
    assert get_session().timeout == before  # the shared client is left as it was


@pytest.mark.parametrize("endpoint", ["notaurl", "ftp://hub.example", "http://"])
def test_a_malformed_endpoint_is_refused_before_anything_is_sent(home, endpoint):
    folder = build_release(DuckDBStore(), PreferenceDatasetConfig(), log=lambda _: None)["folder"]
    hub = HubDataset(repo_id="me/prefs", token=TOKEN, endpoint=endpoint, retry_backoff_s=5.0)
    started = time.monotonic()
    for attempt in (lambda: hub.plan(folder), lambda: hub.publish(folder, log=lambda _: None)):
        with pytest.raises(HubError, match="is not a URL: give the Hub's address as http"):
            attempt()
    assert time.monotonic() - started < 2  # refused at once, not retried with back-off


def test_a_push_still_works_with_timeouts_set(home):
    build_release(DuckDBStore(), PreferenceDatasetConfig(), log=lambda _: None)
    with FakeHub({TOKEN: {"me"}}) as fake:
        hub = HubDataset(repo_id="me/prefs", token=TOKEN, endpoint=fake.url, read_timeout_s=5.0)
        result = dg.materialize(
            [hub_dataset], resources={"store": DuckDBStore(), "hub": hub}, raise_on_error=False
        )
        assert result.success, _failure(result)
        assert len(fake.commits("me/prefs")) == 2


# -- the command line -----------------------------------------------------------------------------


def _cli(monkeypatch, home: Path, *argv: str) -> int:
    from auf_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))  # restored after the test
    return main(list(argv))


def _instance(home: Path) -> dg.DagsterInstance:
    from resources.home import ensure_dagster_home

    return dg.DagsterInstance.from_config(str(ensure_dagster_home(home)))


def _runs(home: Path) -> list:
    instance = _instance(home)
    try:
        return instance.get_runs()
    finally:
        instance.dispose()


def _versions(home: Path) -> int:
    return DuckDBStore().sql_for_tests("SELECT count(*) AS n FROM dataset_releases")["n"][0]


def test_bad_export_and_publish_arguments_are_refused_before_any_work(
    home, monkeypatch, tmp_path, capsys
):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"\xff")
    runs, versions = len(_runs(home)), _versions(home)
    refused = {
        ("export", "--out", str(a_file)): f"--out {a_file} is a file: give a new or empty folder",
        ("export", "--out", str(photos)): "is not empty and is not an earlier export",
        ("export", "--out", str(home / "datasets" / "x")): "is where the home keeps its versions",
        ("export", "--out", str(a_file / "x")): f"{a_file} is a file, not a folder",
        ("export", "--out", str(tmp_path / "new"), "--rounds", "9"): (
            "rounds without judgements cannot be released: ['round-0009']"
        ),
        ("publish", "--repo", "me/prefs", "--endpoint", "notaurl", "--dry-run"): (
            "endpoint 'notaurl' is not a URL"
        ),
        ("publish", "--repo", "bad id", "--dry-run"): "repo id 'bad id' is malformed",
    }
    for argv, message in refused.items():
        started = time.monotonic()
        assert _cli(monkeypatch, home, *argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)  # one line
        assert time.monotonic() - started < 10
    # Flags of the wrong shape are refused by the parser (its usage line, then the error).
    for argv, message in {
        ("export", "--out", str(tmp_path / "new"), "--test-fraction", "1.5"): (
            "argument --test-fraction: must be a finite number in [0, 1), got 1.5"
        ),
        ("export", "--out", str(tmp_path / "new"), "--rounds", "x1"): (
            "argument --rounds: 'x1' is not a round"
        ),
    }.items():
        with pytest.raises(SystemExit) as exit_info:
            _cli(monkeypatch, home, *argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv
    assert a_file.read_text() == "mine" and (photos / "cat.jpg").read_bytes() == b"\xff"
    assert not (tmp_path / "new").exists()
    assert len(_runs(home)) == runs and _versions(home) == versions  # nothing ran or was built


def test_export_and_dry_run_say_when_a_split_is_left_out_and_runs_show_under_their_job(
    home, monkeypatch, tmp_path, capsys
):
    label = "__repository__@auf_assets.definitions:defs"
    tagged = dg.RunsFilter(job_name="dataset_build", tags={".dagster/repository": label})
    before = {r.run_id for r in _runs(home)}
    out = tmp_path / "export"
    assert _cli(monkeypatch, home, "export", "--out", str(out), "--rounds", "1") == 0
    printed = capsys.readouterr()
    assert "rounds-0001-0001 in" in printed.out
    assert "warning: the test split is empty: none of its 4 prompts falls under" in printed.out
    assert "no held-out pairs" in printed.out and "nan" not in printed.out.split()
    assert not list(out.rglob("test-*"))
    assert "Traceback" not in printed.err and "PreviewWarning" not in printed.err

    assert _cli(monkeypatch, home, "publish", "--repo", "me/prefs", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "warning: the test split" in printed and "nothing was sent" in printed
    assert "test-00000" not in printed  # the plan lists no file of the missing split

    # Runs of the commands are filed as the UI files its own runs of the same jobs: the job's
    # page and the Overview list runs by the repository label of the code location.
    instance = _instance(home)
    try:
        runs = [r for r in instance.get_runs(filters=tagged) if r.run_id not in before]
    finally:
        instance.dispose()
    assert len(runs) == 2
    assert {r.tags["dagster/code_location"] for r in runs} == {"auf_assets.definitions:defs"}


@pytest.mark.process
def test_a_failed_push_is_one_line_and_the_trace_goes_to_the_log_file(home, tmp_path):
    """A real `auf` process: no Dagster stack trace or preview warning on the console."""
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUF_", "DAGSTER_", "HF_"))}
    env.update(AUF_HOME=str(home), HF_HUB_OFFLINE="1", HF_TOKEN=TOKEN, COLUMNS="120")
    with FakeHub({TOKEN: {"me"}}) as fake:
        proc = subprocess.run(
            [sys.executable, "-m", "auf_assets.cli", "publish", "--repo", "other/prefs"]
            + ["--endpoint", fake.url],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    shown = proc.stdout + proc.stderr
    for noise in ("Traceback", "Stack Trace", "PreviewWarning", "dagster._core", "DEBUG"):
        assert noise not in shown, shown
    assert (
        "dataset_release failed: hub_dataset: the token has no write access to other/prefs (403)"
        in proc.stderr
    )
    assert len(shown.splitlines()) <= 12, shown
    assert TOKEN not in shown
    log = Path(re.search(r"The full log is in (\S+?)\.? ", proc.stderr).group(1))
    assert log.parent == home / "logs" and log.name.startswith("publish-")
    text = log.read_text()
    assert "STEP_FAILURE" in text and "Stack Trace" in text and "PreviewWarning" in text


# -- what failed, in words ------------------------------------------------------------------------


def test_a_resource_that_cannot_start_is_reported_with_its_cause():
    from auf_assets.cli.common import failure_message
    from resources.serving import engine_from_env

    @dg.asset
    def needs_engine(engine: GenerationEngine) -> None:
        pass

    engine = engine_from_env({"AUF_ENGINE_BACKEND": "bogus"})
    result = dg.materialize([needs_engine], resources={"engine": engine}, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert message.startswith("the engine resource could not start: bad engine settings")
    assert "AUF_ENGINE_BACKEND='bogus' is invalid" in message
    assert "DagsterResourceFunctionError" not in message and "resource_fn" not in message


def test_an_interrupted_run_says_interrupted(tmp_path):
    from auf_assets.cli.common import failure_message, was_interrupted
    from auf_assets.cli.console import RunConsole

    @dg.asset
    def stopped_by_ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C in the terminal sends
        time.sleep(5)

    console = RunConsole(tmp_path / "run.log", verbose=False, stream=io.StringIO())
    job = dg.define_asset_job("interrupted", selection=[stopped_by_ctrl_c])
    defs = dg.Definitions(assets=[stopped_by_ctrl_c], jobs=[job])
    resolved = defs.resolve_job_def("interrupted")
    result = resolved.with_logger_defs(console.logger_defs()).execute_in_process(
        run_config={"loggers": console.run_config_loggers()}, raise_on_error=False
    )
    console.close()
    assert not result.success and was_interrupted(result) and console.interrupted
    assert failure_message(result) == "interrupted (Ctrl-C) during stopped_by_ctrl_c"


@pytest.mark.slow
def test_a_text_column_over_2_gib_is_written_in_standard_types(tmp_path):
    """At UltraFeedback's size the completions config holds 3 GB of text: more than a standard
    Arrow string column can (2 GiB). Shards are cut before the cast, so each one fits."""
    import polars as pl
    import pyarrow.parquet as pq

    from auf_assets.core.release import write_tables

    text = "x" * 2**20
    # the completions config's shape: every response of a prompt in one nested column, 2.1 GB
    nested = pl.DataFrame({"responses": [[{"model": "m", "response": text}] * 10] * 210})
    written = write_tables(tmp_path, {"completions": {"train": nested}}, 500 * 2**20)
    names = written["completions"]["train"]
    assert len(names) == 5
    assert "large" not in str(pq.read_schema(tmp_path / names[0]))  # standard Arrow types
    assert sum(pq.read_metadata(tmp_path / n).num_rows for n in names) == 210
