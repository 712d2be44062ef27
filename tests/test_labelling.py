"""Human labelling with Dagster: annotation batches, the inbox, quarantine, the round sensors,
the nightly schedule, `auf labels`, and the other label sources (reward model, oracle).

Generating a round is the slow part, so one people round (pair selection of round-0001 with the
tiny model) is built once per module and its home directory copied into each test.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import polars as pl
import pytest
from test_round import tiny_resources, tiny_run_config

from auf_assets.checks import ROUND_CHECKS, judgements_recorded
from auf_assets.cli import main as cli_main
from auf_assets.jobs import (
    LABELLED_ASSETS,
    ROUND_CHAIN_TAGS,
    SELECTION_ASSETS,
    active_round_job,
    labelled_round_job,
    pair_selection_job,
)
from auf_assets.label_inbox import import_label_file, label_status, scan_inbox
from auf_assets.labels import annotation_batch, judge_screening
from auf_assets.prompts import prompt_pool
from auf_assets.round import ROUND_ASSETS, judgements
from resources.labelling import LabellingSettings, labelling_from_env
from resources.reward_judge import RewardModelJudge
from resources.store import DuckDBStore
from sensors.rounds import labels_landed, next_round, nightly_round, plan_next_round

R1 = "round-0001"
SELECTION_CHECKS = [c for c in ROUND_CHECKS if c is not judgements_recorded]


def people(**overrides) -> LabellingSettings:
    return LabellingSettings(**{"source": "people", "settle_seconds": 0, **overrides})


def select_pairs_for(instance, key, model_dir, labelling):
    instance.add_dynamic_partitions("rounds", [key])
    return dg.materialize(
        [*SELECTION_ASSETS, *SELECTION_CHECKS],
        instance=instance,
        partition_key=key,
        resources=tiny_resources(model_dir, labelling),
        run_config=tiny_run_config(model_dir),
    )


def train_on_labels(instance, key, model_dir, labelling):
    return dg.materialize(
        [*LABELLED_ASSETS, judgements_recorded],
        instance=instance,
        partition_key=key,
        resources=tiny_resources(model_dir, labelling),
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_lm_dir) -> Path:
    root = tmp_path_factory.mktemp("people-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUF_HOME", str(root))
        instance = dg.DagsterInstance.ephemeral()
        dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
        result = select_pairs_for(instance, R1, tiny_lm_dir, people())
        assert result.success
        assert all(c.passed for c in result.get_asset_check_evaluations())
    return root


@pytest.fixture()
def env(template, tmp_path, monkeypatch, tiny_lm_dir):
    home = tmp_path / "home"
    shutil.copytree(template, home)
    monkeypatch.setenv("AUF_HOME", str(home))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", [R1])
    labelling = people()
    return SimpleNamespace(
        home=home,
        instance=instance,
        store=DuckDBStore(),
        labelling=labelling,
        model=tiny_lm_dir,
        batch=[
            json.loads(line)
            for line in (labelling.outbox_dir / f"{R1}.jsonl").read_text().split("\n")
            if line
        ],
    )


def drop(env, name: str, content) -> Path:
    env.labelling.inbox_dir.mkdir(parents=True, exist_ok=True)
    path = env.labelling.inbox_dir / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in content))
    return path


def labelled(batch, choices, annotator=None):
    out = []
    for rec, choice in zip(batch, choices, strict=False):
        row = {"pair_id": rec["pair_id"], "round_id": rec["round_id"], "choice": choice}
        if annotator:
            row["annotator"] = annotator
        out.append(row)
    return out


def sensor_context(env, cursor=None, labelling=None):
    return dg.build_sensor_context(
        instance=env.instance,
        cursor=cursor,
        resources={"store": env.store, "labelling": labelling or env.labelling},
    )


def table(store, name):
    return store.sql_for_tests(f"SELECT * FROM {name} ORDER BY ALL")


def mark_trained(instance, key):
    instance.report_runless_asset_event(dg.AssetMaterialization("reward_model", partition=key))


# -- the annotation batch ---------------------------------------------------------------------


def test_annotation_batch_is_written_balanced_and_stable(env):
    out = env.labelling.outbox_dir
    names = {p.name for p in out.iterdir()}
    assert names == {
        f"{R1}.csv",
        f"{R1}.jsonl",
        f"{R1}.labelstudio.json",
        "labelstudio_config.xml",
    }
    shown = table(env.store, "presentations")
    pairs = env.store.round_rows("pairs", R1)
    assert shown.height == pairs.height == len(env.batch) == 4
    assert int(shown["swapped"].sum()) == 2
    merged = shown.join(pairs, on="pair_id")
    expect_a = [
        b if s else a for a, b, s in merged.select("completion_a", "completion_b", "swapped").rows()
    ]
    assert merged["shown_as_a"].to_list() == expect_a
    responses = dict(
        env.store.sql_for_tests("SELECT completion_id, response FROM completions").rows()
    )
    by_pair = {r["pair_id"]: r for r in env.batch}
    for row in merged.iter_rows(named=True):
        assert by_pair[row["pair_id"]]["response_A"] == responses[row["shown_as_a"]]
    tasks = json.loads((out / f"{R1}.labelstudio.json").read_text())
    assert [t["data"]["pair_id"] for t in tasks] == [r["pair_id"] for r in env.batch]

    # Re-materialising with another seed keeps the presentation of pairs already sent out, and
    # the time the batch was first written (the partial-labels wait counts from it).
    before = table(env.store, "annotation_batches")
    again = dg.materialize(
        [annotation_batch],
        instance=env.instance,
        partition_key=R1,
        resources={"store": env.store, "labelling": env.labelling},
        run_config={"ops": {"annotation_batch": {"config": {"seed": 99}}}},
    )
    assert again.success
    assert table(env.store, "presentations").equals(shown)
    assert table(env.store, "annotation_batches")["written_at"].equals(before["written_at"])


def test_annotation_batch_writes_nothing_for_an_automatic_judge(env, tmp_path):
    labelling = LabellingSettings(outbox=str(tmp_path / "outbox"))
    result = dg.materialize(
        [annotation_batch],
        instance=env.instance,
        partition_key=R1,
        resources={"store": env.store, "labelling": labelling},
    )
    meta = result.asset_materializations_for_node("annotation_batch")[0].metadata
    assert meta["written"].value is False and "llm_judge" in meta["reason"].value
    assert not (tmp_path / "outbox").exists()


# -- importing label files --------------------------------------------------------------------


def test_a_valid_file_is_imported_once_and_choices_map_back(env):
    path = drop(env, "batch1.jsonl", labelled(env.batch, ["A", "A", "B", "tie"], "ann"))
    outcomes, cursor, waiting = scan_inbox(env.store, env.labelling, None, now=1e12)
    assert [o.status for o in outcomes] == ["imported"] and not waiting
    assert outcomes[0].new_labels == 4 and outcomes[0].rounds == [R1]
    assert not path.exists() and (env.labelling.archive_dir / "batch1.jsonl").exists()
    labels = table(env.store, "labels")
    shown = dict(env.store.sql_for_tests("SELECT pair_id, swapped FROM presentations").rows())
    for row in labels.iter_rows(named=True):
        raw = row["raw_choice"]
        expected = (
            "tie" if raw == "tie" else ("a" if (raw == "A") != shown[row["pair_id"]] else "b")
        )
        assert row["choice"] == expected
        assert (row["labeller"], row["annotator"], row["source"]) == (
            "annotator:ann",
            "ann",
            "people",
        )
        assert row["file"] == "batch1.jsonl" and row["line"] >= 1

    # The same content dropped again (under any name) adds nothing.
    drop(env, "copy-of-batch1.jsonl", (env.labelling.archive_dir / "batch1.jsonl").read_bytes())
    outcomes, _, _ = scan_inbox(env.store, env.labelling, cursor, now=1e12)
    assert outcomes[0].status == "already_imported"
    assert table(env.store, "labels").equals(labels)
    assert env.store.count_rows("imported_files") == 1


def test_a_file_still_being_written_waits_for_the_next_tick(env):
    labelling = people(settle_seconds=3600)
    path = drop(env, "fresh.jsonl", labelled(env.batch, ["A"]))
    now = path.stat().st_mtime + 1
    outcomes, cursor, waiting = scan_inbox(env.store, labelling, None, now=now)
    assert outcomes == [] and waiting == ["fresh.jsonl"]
    outcomes, _, _ = scan_inbox(env.store, labelling, cursor, now=now + 30)  # unchanged since
    assert [o.status for o in outcomes] == ["imported"]
    drop(env, ".hidden.jsonl.tmp", "partial")
    assert scan_inbox(env.store, labelling, None, now=1e12)[0] == []


BAD_FILES = {
    "bad_json": ("x.jsonl", lambda b: json.dumps(b[0]) + "\n{oops\n", 2, "not valid JSON"),
    "missing_column": (
        "x.csv",
        lambda b: f"pair_id,label\n{b[0]['pair_id']},A\n",
        1,
        "no header with a choice column",
    ),
    "unknown_pair": ("x.jsonl", lambda b: '{"pair_id": "pr-nope", "choice": "A"}\n', 1, "unknown"),
    "other_round": (
        "x.jsonl",
        lambda b: json.dumps({"pair_id": b[0]["pair_id"], "choice": "A", "round_id": "round-0002"}),
        1,
        "belongs to round-0001",
    ),
    "invalid_choice": (
        "x.csv",
        lambda b: f"pair_id,choice\n{b[0]['pair_id']},A\n{b[1]['pair_id']},maybe\n",
        3,
        "choice must be A, B or tie",
    ),
    "conflicting_duplicate": (
        "x.jsonl",
        lambda b: "".join(
            json.dumps({"pair_id": b[0]["pair_id"], "choice": c, "annotator": "z"}) + "\n"
            for c in ("A", "B")
        ),
        2,
        "conflicting duplicate",
    ),
    "wrong_encoding": (
        "x.csv",
        lambda b: f"pair_id,choice,comment\n{b[0]['pair_id']},A,caf\xe9\n".encode("latin-1"),
        2,
        "not UTF-8",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_malformed_file_is_quarantined_and_nothing_stored_changes(env, kind):
    # Labels already stored must survive a bad file untouched.
    drop(env, "good.jsonl", labelled(env.batch, ["A", "B"], "first"))
    scan_inbox(env.store, env.labelling, None, now=1e12)
    before = {t: table(env.store, t) for t in ("labels", "pairs", "judgements")}

    name, make, line, message = BAD_FILES[kind]
    path = drop(env, name, make(env.batch))
    outcomes, _, _ = scan_inbox(env.store, env.labelling, None, now=1e12)
    assert [o.status for o in outcomes] == ["quarantined"]
    assert not path.exists()
    moved = env.labelling.quarantine_dir / name
    reason = (env.labelling.quarantine_dir / (name + ".reason")).read_text()
    assert moved.exists() and f"line {line}: " in reason and message in reason, reason
    assert "nothing from this file was stored" in reason
    for t, frame in before.items():
        assert table(env.store, t).equals(frame), t
    # Good lines of a rejected file are not kept either (the rule: whole file or nothing).
    status = env.store.sql_for_tests("SELECT status FROM imported_files WHERE file = ?", [name])
    assert status["status"].to_list() == ["quarantined"]


def test_a_corrected_file_is_accepted_after_quarantine(env):
    bad = labelled(env.batch, ["A", "B", "C"], "ann")
    drop(env, "fixme.jsonl", bad)
    assert scan_inbox(env.store, env.labelling, None, now=1e12)[0][0].status == "quarantined"
    drop(env, "fixme.jsonl", labelled(env.batch, ["A", "B", "A"], "ann"))
    outcome = scan_inbox(env.store, env.labelling, None, now=1e12)[0][0]
    assert outcome.status == "imported" and outcome.new_labels == 3


# -- what is never read, and what is never quoted ----------------------------------------------

SHADOW = "root:*:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n"  # "20228": a leak


def messages_of(env, outcome) -> str:
    """Everything a person or the store gets to see about an import."""
    reasons = [p.read_text() for p in env.labelling.quarantine_dir.glob("*.reason")]
    stored = env.store.sql_for_tests("SELECT reason FROM imported_files")["reason"].to_list()
    return "\n".join([outcome.summary(), *outcome.problems, *reasons, *map(str, stored)])


def test_links_fifos_and_devices_in_the_inbox_are_refused_unread(env, tmp_path):
    import os
    import stat

    secret = tmp_path / "shadow"
    secret.write_text(SHADOW)
    good = tmp_path / "good.jsonl"  # a valid label file: following the link would import it
    good.write_text("".join(json.dumps(r) + "\n" for r in labelled(env.batch, ["A"] * 4)))
    inbox = env.labelling.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "shadow.csv").symlink_to(secret)
    (inbox / "good.jsonl").symlink_to(good)
    os.mkfifo(inbox / "pipe.jsonl")  # opening it for reading would block the sensor forever
    (inbox / "device.csv").symlink_to("/dev/zero")  # an endless file
    (inbox / "a-folder.jsonl").mkdir()  # a folder is left alone

    outcomes, _, waiting = scan_inbox(env.store, env.labelling, None, now=1e12)
    by_name = {o.file: o for o in outcomes}
    assert set(by_name) == {"shadow.csv", "good.jsonl", "pipe.jsonl", "device.csv"}
    assert not waiting
    assert all(o.status == "refused" for o in outcomes), [o.summary() for o in outcomes]
    assert "a symbolic link, not a regular file" in by_name["shadow.csv"].problems[0]
    assert "a named pipe (fifo)" in by_name["pipe.jsonl"].problems[0]
    assert env.store.count_rows("labels") == 0 and env.store.count_rows("imported_files") == 0
    for outcome in outcomes:
        assert "20228" not in messages_of(env, outcome)
        # The entry itself went to quarantine: a link is still a link, its target untouched.
        assert outcome.moved_to.parent == env.labelling.quarantine_dir
        assert outcome.reason_file.exists()
    assert (env.labelling.quarantine_dir / "shadow.csv").is_symlink()
    assert stat.S_ISFIFO((env.labelling.quarantine_dir / "pipe.jsonl").lstat().st_mode)
    assert secret.read_text() == SHADOW and good.exists()
    assert sorted(p.name for p in inbox.iterdir()) == ["a-folder.jsonl"]


def test_cli_refuses_a_link_without_reading_it(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUF_LABEL_SOURCE", "people")
    monkeypatch.setenv("AUF_LABEL_SETTLE_SECONDS", "0")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"pair_id": env.batch[0]["pair_id"], "choice": "A"}) + "\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(good)
    assert cli_main(["labels", "import", str(link)]) == 1
    err = capsys.readouterr().err
    assert "symbolic link" in err and env.store.count_rows("labels") == 0
    shadow = tmp_path / "shadow.csv"
    shadow.symlink_to(tmp_path / "nowhere")  # a dangling link is refused the same way
    assert cli_main(["labels", "import", str(shadow)]) == 1
    assert "symbolic link" in capsys.readouterr().err


def test_a_rejected_file_is_never_quoted(env, capsys, monkeypatch, tmp_path):
    # A password file saved (not linked) into the inbox under a label file's name.
    path = drop(env, "shadow.csv", SHADOW)
    outcome = scan_inbox(env.store, env.labelling, None, now=1e12)[0][0]
    assert outcome.status == "quarantined" and not path.exists()
    assert "line 1: no header with a pair_id and a choice column" in outcome.problems[0]
    assert "20228" not in messages_of(env, outcome) and "root:" not in messages_of(env, outcome)
    # The same through `auf labels import`: nothing quoted on the console either.
    monkeypatch.setenv("AUF_LABEL_SOURCE", "people")
    monkeypatch.setenv("AUF_LABEL_SETTLE_SECONDS", "0")
    mine = tmp_path / "passwd.csv"
    mine.write_text("pair_id,choice\n" + "".join(f"{u},x\n" for u in SHADOW.split()))
    assert cli_main(["labels", "import", str(mine)]) == 1
    err = capsys.readouterr().err
    assert "line 2: choice must be A, B or tie" in err and "root:" not in err


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(env, tmp_path, monkeypatch):
    small = people(max_file_mb=0.05)  # 50 kB
    junk = b"".join(b"%d,junk,junk,junk\n" % i for i in range(10_000))  # 180 kB
    path = drop(env, "big.csv", junk)
    outcome = scan_inbox(env.store, small, None, now=1e12)[0][0]
    assert outcome.status == "refused"
    assert "0.2 MB, above the limit of 0.05 MB (AUF_LABEL_MAX_FILE_MB)" in outcome.problems[0]
    # Moved (not copied) into quarantine, with the reason; nothing stored about it.
    assert not path.exists() and outcome.moved_to.read_bytes() == junk
    assert "above the limit" in outcome.reason_file.read_text()
    assert env.store.count_rows("imported_files") == 0

    # `auf labels import` leaves the user's file alone and copies nothing into quarantine.
    monkeypatch.setenv("AUF_LABEL_MAX_FILE_MB", "0.05")
    monkeypatch.setenv("AUF_LABEL_SETTLE_SECONDS", "0")
    mine = tmp_path / "mine.csv"
    mine.write_bytes(junk)
    before = sorted(p.name for p in env.labelling.quarantine_dir.iterdir())
    assert cli_main(["labels", "import", str(mine)]) == 1
    assert (
        mine.exists() and sorted(p.name for p in env.labelling.quarantine_dir.iterdir()) == before
    )


def test_a_junk_file_is_checked_until_max_problems(env):
    junk = drop(env, "junk.jsonl", b"not json at all\n" * 20_000)
    outcome = scan_inbox(env.store, people(max_problems=7), None, now=1e12)[0][0]
    assert outcome.status == "quarantined" and len(outcome.problems) == 7
    assert outcome.more_problems and "(and more)" in outcome.summary()
    reason = outcome.reason_file.read_text()
    assert "the first 7 problem(s) (checking stopped there; the file has more)" in reason
    assert reason.count("not valid JSON") == 7 and "... and more" in reason
    stored = env.store.sql_for_tests("SELECT reason FROM imported_files")["reason"].item()
    assert stored.count("not valid JSON") == 7 and stored.endswith("; and more")
    assert not junk.exists()
    # The store knows the file by the hash of all of it, although checking stopped early.
    assert outcome.sha256 == hashlib.sha256(b"not json at all\n" * 20_000).hexdigest()


def test_cli_does_not_store_a_file_still_being_written(env, tmp_path, capsys, monkeypatch):
    import threading
    import time

    monkeypatch.setenv("AUF_LABEL_SOURCE", "people")
    monkeypatch.setenv("AUF_LABEL_SETTLE_SECONDS", "1")
    path = tmp_path / "growing.jsonl"
    rows = [json.dumps({"pair_id": r["pair_id"], "choice": "A"}) + "\n" for r in env.batch]
    path.write_text(rows[0])
    stop = threading.Event()

    def writer():  # a slow copy: the rest of the file arrives line by line
        for row in rows[1:] * 10:
            if stop.wait(0.2):
                return
            with path.open("a") as handle:
                handle.write(row)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert cli_main(["labels", "import", str(path)]) == 1
    finally:
        stop.set()
        thread.join()
    err = capsys.readouterr().err
    assert "may still be being written: nothing was read" in err, err
    assert env.store.count_rows("labels") == 0 and env.store.count_rows("imported_files") == 0

    # Saved moments ago and not changing: read after the settle time, in one piece.
    complete = tmp_path / "complete.jsonl"
    complete.write_text("".join(rows))
    started = time.monotonic()
    assert cli_main(["labels", "import", str(complete)]) == 0
    assert time.monotonic() - started >= 0.5
    assert "imported 4 new labels" in capsys.readouterr().out
    assert env.store.count_rows("imported_files") == 1


def test_outbox_paths_are_stored_relative_to_the_home(env):
    # `env` runs in a copy of the home the batch was written in.
    stored = env.store.sql_for_tests("SELECT jsonl_path, csv_path FROM annotation_batches").row(0)
    assert stored == ("labels/outbox/round-0001.jsonl", "labels/outbox/round-0001.csv")
    (status,) = label_status(env.store, env.labelling)
    assert status.outbox["jsonl"] == str(env.home / "labels/outbox/round-0001.jsonl")
    # A row written before paths were relative names the home it was written in.
    env.store.sql_for_tests(
        "UPDATE annotation_batches SET jsonl_path = '/elsewhere/old-home/labels/outbox/"
        "round-0001.jsonl', labelstudio_path = '/data/shared-outbox/round-0001.labelstudio.json'"
    )
    (status,) = label_status(env.store, env.labelling)
    assert status.outbox["jsonl"] == str(env.home / "labels/outbox/round-0001.jsonl")
    # A path outside any home (an outbox set elsewhere) is shown as it is.
    assert status.outbox["labelstudio"] == "/data/shared-outbox/round-0001.labelstudio.json"


# -- the labels_landed sensor -----------------------------------------------------------------


def test_labels_landed_does_nothing_for_an_automatic_judge_and_says_so_once(env):
    drop(env, "a.jsonl", labelled(env.batch, ["A"] * 4))
    result = labels_landed(sensor_context(env, labelling=LabellingSettings()))
    assert "'llm_judge'" in result.skip_reason.skip_message
    assert env.store.count_rows("labels") == 0
    # Running by default: later ticks skip without a message (no log line every 30 s) ...
    quiet = labels_landed(sensor_context(env, cursor=result.cursor, labelling=LabellingSettings()))
    assert quiet.skip_reason is None and not quiet.run_requests
    assert env.store.count_rows("labels") == 0
    # ... until the reason changes.
    judge = LabellingSettings(source="reward_model_judge")
    changed = labels_landed(sensor_context(env, cursor=quiet.cursor, labelling=judge))
    assert "'reward_model_judge'" in changed.skip_reason.skip_message
    assert labels_landed.default_status == dg.DefaultSensorStatus.RUNNING


def test_labels_landed_waits_then_trains_and_is_idempotent(env):
    drop(env, "half.jsonl", labelled(env.batch, ["A", "B"], "ann"))
    first = labels_landed(sensor_context(env))
    assert (
        first.run_requests == []
        and "2/4 pairs labelled; needs all 4 pairs" in first.skip_reason.skip_message
    )
    assert env.store.count_rows("labels") == 2

    # Partial rule: half the pairs are enough once the wait is over.
    partial = people(min_fraction=0.5, wait_hours=0)
    result = labels_landed(sensor_context(env, cursor=first.cursor, labelling=partial))
    assert [(r.job_name, r.partition_key, r.run_key) for r in result.run_requests] == [
        ("labelled_round", R1, f"labels-{R1}-2")  # the run_key counts the round's labels
    ]
    assert result.dynamic_partitions_requests == []  # round-0002 waits for round-0001's model
    # Evaluating the same tick again adds nothing and asks for the same run (same run_key).
    again = labels_landed(sensor_context(env, cursor=first.cursor, labelling=partial))
    assert [r.run_key for r in again.run_requests] == [f"labels-{R1}-2"]
    assert env.store.count_rows("labels") == 2 and env.store.count_rows("imported_files") == 1

    # With a long wait the partial rule does not fire yet.
    waiting = labels_landed(sensor_context(env, labelling=people(min_fraction=0.5, wait_hours=24)))
    assert waiting.run_requests == []


def test_new_labels_after_a_failed_run_start_a_new_run(env, capfd):
    from dagster._core.test_utils import create_run_for_test

    partial = people(min_fraction=0.5, wait_hours=0)
    drop(env, "half.jsonl", labelled(env.batch[:2], ["A", "B"], "ann"))
    first = labels_landed(sensor_context(env, labelling=partial))
    key = f"labels-{R1}-2"
    assert [r.run_key for r in first.run_requests] == [key]
    # The run with that key failed: the daemon never launches a run_key twice, and the sensor
    # says why the round waits.
    create_run_for_test(
        env.instance,
        job_name="labelled_round",
        status=dg.DagsterRunStatus.FAILURE,
        tags={"dagster/run_key": key, "dagster/partition": R1},
    )
    capfd.readouterr()
    again = labels_landed(sensor_context(env, cursor=first.cursor, labelling=partial))
    assert [r.run_key for r in again.run_requests] == [key]
    logged = capfd.readouterr().err  # the sensor's log (its skip reason when it requests nothing)
    assert f"({key}) failed: it is tried again when more labels arrive" in logged
    # One more label arrives: a new run_key, so the daemon launches a new run.
    drop(env, "one-more.jsonl", labelled(env.batch[2:3], ["A"], "ann"))
    third = labels_landed(sensor_context(env, cursor=again.cursor, labelling=partial))
    assert [(r.job_name, r.partition_key, r.run_key) for r in third.run_requests] == [
        ("labelled_round", R1, f"labels-{R1}-3")
    ]


def test_late_labels_train_the_newest_round_again_before_the_next_round(env):
    partial = people(min_fraction=0.5, wait_hours=0)
    drop(env, "half.jsonl", labelled(env.batch[:2], ["A", "B"], "ann"))
    first = labels_landed(sensor_context(env, labelling=partial))
    assert [r.run_key for r in first.run_requests] == [f"labels-{R1}-2"]
    assert train_on_labels(env.instance, R1, env.model, partial).success
    status = {s.round_id: s for s in label_status(env.store, partial)}[R1]
    assert (status.state, status.late_labels) == ("trained", 0)

    # The rest of the labels arrive after the model was trained on half of them: the round is
    # still the newest, so it is trained again, and the next round waits for that model.
    drop(env, "rest.jsonl", labelled(env.batch[2:], ["A", "B"], "ann"))
    result = labels_landed(sensor_context(env, cursor=first.cursor, labelling=partial))
    assert [(r.job_name, r.partition_key, r.run_key) for r in result.run_requests] == [
        ("labelled_round", R1, f"labels-{R1}-4")
    ]
    assert result.dynamic_partitions_requests == []
    status = {s.round_id: s for s in label_status(env.store, partial)}[R1]
    assert (status.state, status.late_labels, status.late_pairs) == ("retrain", 2, 2)
    assert status.superseded_by is None and "arrived after its reward model" in status.why
    with dg.instance_for_test() as instance:  # a schedule context needs a persistent instance
        instance.add_dynamic_partitions("rounds", [R1])
        mark_trained(instance, R1)
        with dg.build_schedule_context(
            instance=instance, resources={"store": env.store, "labelling": partial}
        ) as context:
            skip = nightly_round(context)
    assert f"{R1} is trained again by labels_landed" in skip.skip_message

    assert train_on_labels(env.instance, R1, env.model, partial).success
    assert env.store.round_rows("reward_models", R1)["pairs_trained"].to_list() == [4]
    status = {s.round_id: s for s in label_status(env.store, partial)}[R1]
    assert (status.state, status.late_labels) == ("trained", 0)
    after = labels_landed(sensor_context(env, cursor=result.cursor, labelling=partial))
    assert [(r.job_name, r.partition_key) for r in after.run_requests] == [
        ("pair_selection", "round-0002")
    ]


def test_late_labels_are_reported_not_used_once_a_later_round_exists(env, capsys, monkeypatch):
    drop(env, "all.jsonl", labelled(env.batch, ["A", "B", "A", "B"], "ann"))
    scan_inbox(env.store, env.labelling, None, now=1e12)
    assert train_on_labels(env.instance, R1, env.model, env.labelling).success
    env.instance.add_dynamic_partitions("rounds", ["round-0002"])
    drop(env, "late.jsonl", labelled(env.batch[:3], ["B", "B", "B"], "late"))
    result = labels_landed(sensor_context(env))
    assert env.store.count_rows("labels") == 7
    assert not result.run_requests  # round-0002 started from round-0001's model: no fork
    status = {
        s.round_id: s for s in label_status(env.store, env.labelling, registered=["round-0002", R1])
    }[R1]
    assert (status.state, status.late_labels, status.late_pairs) == ("trained", 3, 3)
    assert status.superseded_by == "round-0002"
    assert "are NOT used" in status.why and "make round-0002 and every later round stale" in (
        status.why
    )
    # Without the Dagster partitions (the CLI), a later round in the store counts the same.
    assert {s.round_id: s.state for s in label_status(env.store, env.labelling)}[R1] == "retrain"
    env.store.register_round("round-0002", 2)
    assert {s.round_id: s.state for s in label_status(env.store, env.labelling)}[R1] == "trained"

    monkeypatch.setenv("AUF_LABEL_SOURCE", "people")
    assert cli_main(["labels", "status"]) == 0
    out = capsys.readouterr().out
    assert "3 labels (3 pairs) arrived after its reward model was trained and are NOT used" in out
    assert (
        "3 label(s) arrived after their round was trained and are not used: round-0001 (3)" in out
    )


def test_label_status_reads_all_rounds_in_a_constant_number_of_queries(env, monkeypatch):
    drop(env, "half.jsonl", labelled(env.batch[:2], ["A", "tie"], "ann"))
    scan_inbox(env.store, env.labelling, None, now=1e12)
    # Four more rounds with a batch and labels of their own (rows written directly).
    for k in range(2, 6):
        rid = f"round-{k:04d}"
        env.store.sql_for_tests(
            "INSERT INTO annotation_batches (round_id, pairs, written_at) VALUES (?, 1, now())",
            [rid],
        )
        env.store.sql_for_tests(
            "INSERT INTO labels SELECT * REPLACE (label_id || ? AS label_id, ? AS round_id) "
            "FROM labels WHERE round_id = ?",
            [rid, rid, R1],
        )
    connections = []
    real = DuckDBStore._connect

    def counting(self):
        connections.append(1)
        return real(self)

    monkeypatch.setattr(DuckDBStore, "_connect", counting)
    statuses = label_status(env.store, env.labelling)
    assert [s.round_id for s in statuses] == [R1] + [f"round-{k:04d}" for k in range(2, 6)]
    assert [s.labels for s in statuses] == [2] * 5 and statuses[0].ties == 1
    assert len(connections) == 2  # label progress, and the labels of every round at once


def test_people_verdicts_resolve_every_label_and_skip_unlabelled_pairs(env):
    b = env.batch
    drop(env, "x.jsonl", labelled(b[:3], ["A", "A", "tie"], "x"))
    drop(env, "y.jsonl", labelled(b[:2], ["A", "B"], "y"))
    drop(env, "z.csv", f"pair_id,choice,annotator\n{b[1]['pair_id']},B,z\n")
    scan_inbox(env.store, env.labelling, None, now=1e12)
    result = train_on_labels(env.instance, R1, env.model, env.labelling)
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    shown = dict(env.store.sql_for_tests("SELECT pair_id, swapped FROM presentations").rows())
    verdicts = {
        r["pair_id"]: r for r in env.store.round_rows("judgements", R1).iter_rows(named=True)
    }

    def side(presented, pid):  # what "A"/"B" means for the pair's own a/b
        return "a" if (presented == "A") != shown[pid] else "b"

    p0, p1, p2, p3 = (r["pair_id"] for r in b)
    assert verdicts[p0]["preference"] == side("A", p0)  # 2 votes for A
    assert (
        verdicts[p0]["n_labels"] == 2
        and verdicts[p0]["labeller"] == "people:annotator:x,annotator:y"
    )
    assert verdicts[p1]["preference"] == side("B", p1)  # A, B, B: majority B
    assert json.loads(verdicts[p1]["votes"])[side("B", p1)] == 2
    assert verdicts[p2]["preference"] == "tie"
    assert verdicts[p3]["preference"] == "unlabelled" and verdicts[p3]["n_labels"] == 0
    assert verdicts[p0]["raw_choices"] == "A;A" and verdicts[p0]["labelled_at"] is not None
    model = env.store.round_rows("reward_models", R1)
    assert model["pairs_trained"].to_list() == [2]  # ties and unlabelled pairs are not trained on


def test_people_judgements_fail_clearly_without_labels(env):
    with pytest.raises(dg.Failure, match="has no labels yet"):
        train_on_labels(env.instance, R1, env.model, env.labelling)


def test_end_to_end_labels_to_the_next_round(env, tiny_lm_dir):
    """Labels dropped -> sensor -> labelled_round run -> sensor -> round-0002 selected, through
    Dagster's own sensor evaluation (run keys, partition requests validated) and real runs."""
    defs = dg.Definitions(
        assets=[prompt_pool, *ROUND_ASSETS, judge_screening, annotation_batch],
        asset_checks=ROUND_CHECKS,
        jobs=[active_round_job, pair_selection_job, labelled_round_job],
        sensors=[labels_landed],
        resources=tiny_resources(tiny_lm_dir, env.labelling),
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("rounds", [R1])

        def tick(cursor):
            # `with`: the context opens its own instance from the ref and must close it again.
            with dg.build_sensor_context(
                instance_ref=instance.get_ref(),
                cursor=cursor,
                definitions=defs,
                resources={"store": env.store, "labelling": env.labelling},
            ) as context:
                data = labels_landed.evaluate_tick(context)
            for request in data.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            for request in data.run_requests:
                job = defs.resolve_job_def(request.job_name)
                run_config = (
                    tiny_run_config(tiny_lm_dir) if request.job_name == "pair_selection" else {}
                )
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=request.partition_key,
                    run_config=run_config,
                    tags=request.tags,
                )
                assert result.success
            return data

        drop(env, "all.jsonl", labelled(env.batch, ["A", "B", "A", "B"], "ann"))
        first = tick(None)
        assert [r.run_key for r in first.run_requests] == [f"labels-{R1}-4"]
        assert first.run_requests[0].tags["dagster/sensor_name"] == "labels_landed"
        assert env.store.count_rows("reward_models", R1) == 1

        second = tick(first.cursor)
        assert [(r.job_name, r.run_key) for r in second.run_requests] == [
            ("pair_selection", "round-0002")
        ]
        assert instance.get_dynamic_partitions("rounds") == [R1, "round-0002"]
        assert (env.labelling.outbox_dir / "round-0002.jsonl").exists()
        scores = env.store.round_rows("reward_scores", "round-0002")
        assert set(scores["reward_model_round"]) == {R1}  # trained on round-0001's labels

        third = tick(second.cursor)
        assert third.run_requests == []
        assert "round-0002: 0/4 pairs labelled" in third.skip_message


def test_stop_conditions_say_why(env):
    mark_trained(env.instance, R1)
    plan = plan_next_round(env.instance, env.store, people(max_rounds=1), start_first=False)
    assert plan.key is None and "max_rounds=1 reached" in plan.reason
    plan = plan_next_round(env.instance, env.store, people(), start_first=False)
    assert plan.key == "round-0002"
    # A run of the newest round that is queued or running (e.g. training it again on late
    # labels) changes its model: the next round waits for it even though it was trained.
    from dagster._core.test_utils import create_run_for_test

    run = create_run_for_test(
        env.instance,
        job_name="labelled_round",
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": R1},
    )
    plan = plan_next_round(env.instance, env.store, people(), start_first=False)
    assert plan.key is None
    assert f"{R1} is running (run {run.run_id[:8]} of job labelled_round)" in plan.reason
    env.instance.report_run_canceled(run)
    env.store.sql_for_tests(
        "DELETE FROM prompts WHERE prompt_id NOT IN (SELECT prompt_id FROM round_prompts)"
    )
    result = labels_landed(sensor_context(env))
    assert "prompt pool is used up" in result.skip_reason.skip_message


def test_only_round_runs_hold_the_next_round_back(env):
    """A training run of the newest round's partition is not a round: rounds go on."""
    from dagster._core.test_utils import create_run_for_test

    from auf_assets.training import policy_training_job, reward_model_training_job

    def training_runs(instance):
        mark_trained(instance, R1)
        for job in (policy_training_job, reward_model_training_job):
            create_run_for_test(
                instance,
                job_name=job.name,
                status=dg.DagsterRunStatus.STARTED,
                tags={"dagster/partition": R1, "auf/trigger": "labels_landed"},
            )

    training_runs(env.instance)
    plan = plan_next_round(env.instance, env.store, people(), start_first=False)
    assert plan.key == "round-0002", plan.reason
    result = labels_landed(sensor_context(env))
    assert [(r.job_name, r.partition_key) for r in result.run_requests] == [
        ("pair_selection", "round-0002")
    ]
    automatic = dg.build_sensor_context(
        instance=env.instance, resources={"store": env.store, "labelling": LabellingSettings()}
    )
    assert next_round(automatic).run_requests[0].partition_key == "round-0002"
    with dg.instance_for_test() as instance:  # a schedule context needs a persistent instance
        instance.add_dynamic_partitions("rounds", [R1])
        training_runs(instance)
        with dg.build_schedule_context(
            instance=instance,
            resources={"store": env.store, "labelling": LabellingSettings()},
            scheduled_execution_time=datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc),
        ) as context:
            assert nightly_round(context).partition_key == "round-0002"

    # A run of round assets started from the UI (by asset selection) is a round run, named so.
    env.instance.add_dynamic_partitions("rounds", ["round-0002"])
    run = create_run_for_test(
        env.instance,
        job_name="__ASSET_JOB",
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": "round-0002"},
        asset_selection=frozenset({dg.AssetKey("completions")}),
    )
    plan = plan_next_round(env.instance, env.store, people(), start_first=False)
    assert plan.key is None
    assert f"round-0002 is running (run {run.run_id[:8]} of assets completions)" in plan.reason


# -- automatic mode: next_round, and the nightly schedule -------------------------------------


def test_next_round_sensor_starts_rounds_for_automatic_judges(auf_home):
    store, labelling = DuckDBStore(), LabellingSettings()
    instance = dg.DagsterInstance.ephemeral()
    ctx = lambda: dg.build_sensor_context(  # noqa: E731
        instance=instance, resources={"store": store, "labelling": labelling}
    )
    assert "no prompts ingested" in next_round(ctx()).skip_message
    dg.materialize([prompt_pool], instance=instance, resources={"store": store})
    first = next_round(ctx())
    assert [(r.job_name, r.partition_key, r.run_key) for r in first.run_requests] == [
        ("active_round", R1, R1)
    ]
    instance.add_dynamic_partitions("rounds", [R1])
    assert "round-0001 has not finished" in next_round(ctx()).skip_message
    mark_trained(instance, R1)
    second = next_round(ctx())
    assert second.run_requests[0].partition_key == "round-0002"
    assert second.dynamic_partitions_requests[0].partition_keys == ["round-0002"]
    people_ctx = dg.build_sensor_context(
        instance=instance, resources={"store": store, "labelling": people()}
    )
    assert "labels_landed advances" in next_round(people_ctx).skip_message


def test_nightly_schedule(env):
    from dagster._core.test_utils import create_run_for_test

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("rounds", [R1])

        def evaluate(labelling):
            with dg.build_schedule_context(
                instance=instance,
                resources={"store": env.store, "labelling": labelling},
                scheduled_execution_time=datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc),
            ) as context:
                return nightly_round(context)

        # People mode: round-0001 waits for its labels.
        assert "round-0001 is waiting for labels" in evaluate(env.labelling).skip_message
        # Automatic mode: round-0001 never finished and nothing runs it: run it again.
        request = evaluate(LabellingSettings())
        assert request.partition_key == R1 and request.run_key == f"{R1}-2026-03-01"
        assert set(request.asset_selection) == {a.key for a in ROUND_ASSETS}
        # Requested by asset selection, not by a round job: the chain tag is set by the schedule.
        assert request.tags == {**ROUND_CHAIN_TAGS, "auf/trigger": "nightly_round"}
        mark_trained(instance, R1)
        request = evaluate(LabellingSettings())
        assert request.partition_key == "round-0002"
        assert "round-0002" in instance.get_dynamic_partitions("rounds")
        create_run_for_test(
            instance,
            job_name="active_round",
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": "round-0002"},
        )
        assert "round-0002 running" in evaluate(LabellingSettings()).skip_message
        for key in ("round-10000", "round-9999"):
            create_run_for_test(
                instance,
                job_name="active_round",
                status=dg.DagsterRunStatus.NOT_STARTED,
                tags={"dagster/partition": key},
            )
        # Named in round order (round-10000 sorts before round-9999 as a string).
        assert evaluate(LabellingSettings()).skip_message.startswith(
            "round-0002, round-9999, round-10000 running"
        )
    assert nightly_round.default_status == dg.DefaultScheduleStatus.STOPPED
    assert nightly_round.cron_schedule == "0 2 * * *"
    assert labels_landed.default_status == dg.DefaultSensorStatus.RUNNING
    assert next_round.default_status == dg.DefaultSensorStatus.STOPPED


def test_settings_from_the_environment():
    s = labelling_from_env({"AUF_LABEL_SOURCE": "people", "AUF_LABEL_MIN_FRACTION": "0.8"})
    assert s.people and s.min_fraction == 0.8 and s.problem is None
    s.check()  # nothing rejected: no error (bad values: tests/test_settings_env.py)
    from sensors.rounds import nightly_settings

    nightly = nightly_settings({"AUF_NIGHTLY_TIMEZONE": "Europe/Zurich"})
    assert (nightly.cron, nightly.timezone, nightly.problem) == (
        "0 2 * * *",
        "Europe/Zurich",
        None,
    )


# -- auf labels -------------------------------------------------------------------------------


def test_cli_import_and_status(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUF_LABEL_SOURCE", "people")
    monkeypatch.setenv("AUF_LABEL_SETTLE_SECONDS", "0")  # files written just now: read at once
    good = tmp_path / "mine.csv"
    good.write_text(
        "pair_id,choice,annotator\n" + "".join(f"{r['pair_id']},A,me\n" for r in env.batch[:3])
    )
    assert cli_main(["labels", "import", str(good), "--round", R1]) == 0
    out = capsys.readouterr().out
    assert "imported 3 new labels" in out and good.exists()  # the user's file stays put
    assert cli_main(["labels", "import", str(good)]) == 0
    assert "already imported" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"pair_id": env.batch[3]["pair_id"], "choice": "A"}) + "\n")
    assert cli_main(["labels", "import", str(bad), "--round", "round-0002"]) == 1
    err = capsys.readouterr().err
    assert "line 1: pair" in err and "not to round-0002" in err
    assert bad.exists() and (env.labelling.quarantine_dir / "bad.jsonl.reason").exists()
    assert env.store.count_rows("labels") == 3

    assert cli_main(["labels", "status"]) == 0
    out = capsys.readouterr().out
    assert R1 in out and "3/4" in out and "waiting" in out and f"{R1}.jsonl" in out

    assert cli_main(["labels", "import", str(tmp_path / "missing.jsonl")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_import_outside_the_inbox_keeps_the_original(env, tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_text(json.dumps({"pair_id": env.batch[0]["pair_id"], "choice": "B"}) + "\n")
    outcome = import_label_file(src, env.store, env.labelling, keep_original=True)
    assert outcome.status == "imported" and src.exists()
    status = {s.round_id: s for s in label_status(env.store, env.labelling)}
    assert status[R1].labelled_pairs == 1 and status[R1].state == "waiting"


# -- other label sources ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory, tiny_lm_dir) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-reward")
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_reward_model_judge_labels_a_round(env, tiny_reward_model):
    judge = RewardModelJudge(model=str(tiny_reward_model), device="cpu", batch_size=3)
    resources = {
        **tiny_resources(env.model, LabellingSettings(source="reward_model_judge")),
        "reward_judge": judge,
    }
    result = dg.materialize(
        [judgements, judgements_recorded],
        instance=env.instance,
        partition_key=R1,
        resources=resources,
    )
    assert result.success and result.get_asset_check_evaluations()[0].passed
    verdicts = env.store.round_rows("judgements", R1)
    scores = dict(
        env.store.sql_for_tests(
            "SELECT completion_id, score FROM judge_scores WHERE aspect = 'reward'"
        ).rows()
    )
    for row in verdicts.iter_rows(named=True):
        assert row["source"] == "reward_model_judge" and row["labeller"] == judge.name
        a = scores[
            env.store.sql_for_tests(
                "SELECT completion_a FROM pairs WHERE pair_id = ?", [row["pair_id"]]
            ).item()
        ]
        assert row["score_a"] == pytest.approx(a)
        assert row["preference"] == ("a" if row["score_a"] > row["score_b"] else "b")
        # the reward gap read as a Bradley-Terry probability of the chosen side (temperature 1)
        gap = abs(row["score_a"] - row["score_b"])
        assert row["confidence"] == pytest.approx(1 / (1 + math.exp(-gap)))
    # the same text scores the same alone and in a padded batch
    one = judge.score(["q"], ["a short answer"])
    many = judge.score(["q", "q2"], ["a short answer", "a much longer answer " * 5])
    assert one[0] == pytest.approx(many[0], abs=1e-4)
    with pytest.raises(ValueError, match="no model"):
        RewardModelJudge().score(["q"], ["a"])


def test_oracle_labels_a_round_read_from_a_pool_file(auf_home, tiny_lm_dir, tmp_path):
    rows = [
        {
            "prompt_id": f"q{i}",
            "source": "alpaca_eval",
            "prompt": f"Question number {i}?",
            "model": f"model-{m}",
            "completion_id": f"q{i}-model-{m}",
            "response": f"Answer {i} by model {m}.",
            "oracle_score": (i * 3 + m) % 5 / 4,
        }
        for i in range(3)
        for m in range(3)
    ]
    pool = tmp_path / "pool.parquet"
    pl.DataFrame(rows).write_parquet(pool)
    labelling = LabellingSettings(source="oracle", oracle_pool=str(pool))
    instance = dg.DagsterInstance.ephemeral()
    store = DuckDBStore()
    assert dg.materialize(
        [prompt_pool],
        instance=instance,
        resources={"store": store},
        run_config={"ops": {"prompt_pool": {"config": {"path": str(pool)}}}},
    ).success
    assert store.count_rows("prompts") == 3  # one prompt per id, duplicates dropped
    instance.add_dynamic_partitions("rounds", [R1])
    config = tiny_run_config(tiny_lm_dir)
    config["ops"]["completions"] = {"config": {"pool_path": str(pool)}}
    result = dg.materialize(
        [*ROUND_ASSETS, *ROUND_CHECKS],
        instance=instance,
        partition_key=R1,
        resources=tiny_resources(tiny_lm_dir, labelling),
        run_config=config,
    )
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations()), [
        (c.check_name, c.metadata) for c in result.get_asset_check_evaluations() if not c.passed
    ]
    completions = store.round_rows("completions", R1)
    assert sorted(completions["completion_id"]) == sorted(r["completion_id"] for r in rows)
    oracle = {r["completion_id"]: r["oracle_score"] for r in rows}
    for row in store.round_rows("judgements", R1).iter_rows(named=True):
        pair = store.sql_for_tests("SELECT * FROM pairs WHERE pair_id = ?", [row["pair_id"]]).row(
            0, named=True
        )
        a, b = oracle[pair["completion_a"]], oracle[pair["completion_b"]]
        assert row["preference"] == ("tie" if a == b else "a" if a > b else "b")
        assert row["labeller"] == "oracle:pool.parquet"

    # A missing pool setting or file is a clear failure.
    with pytest.raises(dg.Failure, match="no pool file is set"):
        dg.materialize(
            [judgements],
            instance=instance,
            partition_key=R1,
            resources=tiny_resources(tiny_lm_dir, LabellingSettings(source="oracle")),
        )
    bad = dict(config)
    bad["ops"] = {
        **config["ops"],
        "completions": {"config": {"pool_path": str(tmp_path / "no.parquet")}},
    }
    with pytest.raises(dg.Failure, match="does not exist"):
        dg.materialize(
            [ROUND_ASSETS[1]],
            instance=instance,
            partition_key=R1,
            resources=tiny_resources(tiny_lm_dir, labelling),
            run_config={"ops": {"completions": bad["ops"]["completions"]}},
        )
