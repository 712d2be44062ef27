"""Files a user names (prompt files, price tables, run configs, pool files): a fifo or a device is
refused at once (never a read that blocks forever), a file too large is refused before it is
read, and no message quotes the file (issue 19: the label inbox's rules, everywhere)."""

from __future__ import annotations

import os
import signal
import stat
from contextlib import contextmanager

import polars as pl
import pytest
import yaml

from auf_assets.cli.demo import _read_run_config
from auf_assets.core.costs import PriceTable, PriceTableError
from auf_assets.core.prompts import PromptInputError, load_prompts
from auf_assets.core.response_pool import PoolFileError, oracle_scores, read_pool
from auf_assets.core.simulation.pool import PoolError, load_pool
from resources.home import ensure_dagster_home

SECRET = "root:$6$Xsecret:20228:0:99999:7:::"  # what /etc/shadow's first line looks like


@contextmanager
def no_hang(seconds: int = 10):
    """Fail (instead of hanging the suite) when the body blocks, e.g. on opening a fifo."""

    def timed_out(signum, frame):
        raise AssertionError(f"blocked for {seconds} s (a fifo was opened for reading?)")

    previous = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fifo(path):
    os.mkfifo(path)
    return path


def secret_behind_link(tmp_path, name):
    """`name` in tmp_path: a symbolic link to a file that is not what its name says."""
    target = tmp_path / "shadow"
    target.write_text(SECRET + "\nbin:*:20228:0:99999:7:::\n")
    link = tmp_path / name
    link.symlink_to(target)
    return link


# -- prompt files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["p.jsonl", "p.json", "p.csv", "p.parquet"])
def test_a_prompt_fifo_is_refused_not_read(tmp_path, name):
    path = fifo(tmp_path / name)
    with no_hang(), pytest.raises(PromptInputError, match="named pipe.*not a regular file"):
        load_prompts(path)


def test_a_prompt_file_over_the_size_limit_is_refused_naming_it(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text('{"prompt": "a"}\n' * 100)
    with pytest.raises(PromptInputError, match=r"1,600 bytes, above the limit of 1,000 bytes"):
        load_prompts(path, max_file_bytes=1_000)
    assert len(load_prompts(path, max_file_bytes=1_600)) == 1  # at the limit: read


def test_a_prompt_csv_that_is_not_a_table_is_not_quoted(tmp_path):
    link = secret_behind_link(tmp_path, "prompts.csv")
    with pytest.raises(PromptInputError, match="no prompt column found") as raised:
        load_prompts(link)
    assert "Xsecret" not in str(raised.value) and "1 column(s)" in str(raised.value)


def test_a_prompt_file_through_a_link_to_a_good_file_is_read(tmp_path):
    target = tmp_path / "real.jsonl"
    target.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    (tmp_path / "link.jsonl").symlink_to(target)
    assert len(load_prompts(tmp_path / "link.jsonl")) == 2


# -- the price table ------------------------------------------------------------------------------


def test_a_price_table_fifo_is_refused_not_read(tmp_path):
    path = fifo(tmp_path / "prices.yaml")
    with no_hang(), pytest.raises(PriceTableError, match="cannot be read.*named pipe"):
        PriceTable.load(path)


def test_a_price_table_over_the_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("# " + "x" * 2_000_000 + "\ngpu_hour: 1\n")
    with pytest.raises(PriceTableError, match=r"2\.0 MB, above the limit of 1\.0 MB"):
        PriceTable.load(path)


def test_a_price_table_yaml_error_names_the_place_not_the_line(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("password: hunter2: x\n")
    with pytest.raises(PriceTableError, match=r"not valid YAML.*line 1, column 18") as raised:
        PriceTable.load(path)
    assert "hunter2" not in str(raised.value)


def test_a_bad_price_names_the_entry_and_its_type_not_the_value(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("gpu_hour: hunter2\n")
    with pytest.raises(PriceTableError, match="gpu_hour: text is not a number") as raised:
        PriceTable.load(path)
    assert "hunter2" not in str(raised.value)


# -- the run config of `auf demo --config` --------------------------------------------------------


def test_a_run_config_fifo_is_refused_not_read(tmp_path):
    path = fifo(tmp_path / "run.yaml")
    with no_hang(), pytest.raises(ValueError, match="named pipe"):
        _read_run_config(str(path))


def test_a_run_config_yaml_error_does_not_quote_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("ops:\n  token: sk-abc123: x\n")
    with pytest.raises(ValueError, match=r"not valid YAML.*line 2") as raised:
        _read_run_config(str(path))
    assert "sk-abc123" not in str(raised.value)


def test_a_run_config_in_another_encoding_says_so(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(yaml.safe_dump({"ops": {}}).encode("utf-16"))
    with pytest.raises(ValueError, match="not UTF-8 text.*save it as UTF-8"):
        _read_run_config(str(path))


def test_a_run_config_over_the_limit_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("# " + "x" * 1_500_000 + "\nops: {}\n")
    with pytest.raises(ValueError, match="above the limit of 1.0 MB"):
        _read_run_config(str(path))


# -- pool files (AUF_ORACLE_POOL, the completions' pool, `auf simulate --pool`) -----------------


def test_an_oracle_pool_fifo_is_named_as_one(tmp_path):
    path = fifo(tmp_path / "pool.parquet")
    with no_hang(), pytest.raises(PoolFileError, match="named pipe"):
        oracle_scores(path, ["c1"])


def test_a_response_pool_that_is_not_a_table_is_not_quoted(tmp_path):
    link = secret_behind_link(tmp_path, "pool.csv")
    with pytest.raises(PoolFileError, match="has no column") as raised:
        read_pool(link, ["p1"])
    assert "Xsecret" not in str(raised.value)


def test_a_response_pool_parse_error_does_not_quote_the_file(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"completion_id": "c1", "oracle_score": 1.0}\nhunter2 secret\n')
    with pytest.raises(PoolFileError, match="cannot be read as jsonl") as raised:
        oracle_scores(path, ["c1"])
    assert "hunter2" not in str(raised.value) and "('h')" not in str(raised.value)


def test_a_simulation_pool_fifo_is_named_as_one(tmp_path):
    path = fifo(tmp_path / "pool.csv")
    with no_hang(), pytest.raises(PoolError, match="named pipe"):
        load_pool(path)


def test_a_simulation_pool_that_is_not_a_table_is_not_quoted(tmp_path):
    link = secret_behind_link(tmp_path, "pool.csv")
    with pytest.raises(PoolError) as raised:
        load_pool(link)
    assert "Xsecret" not in str(raised.value) and "99999" not in str(raised.value)


def test_a_simulation_pool_names_bad_scores_by_completion_not_value(tmp_path):
    rows = {
        "prompt_id": ["p1", "p1"],
        "prompt": ["q", "q"],
        "completion_id": ["c1", "c2"],
        "model": ["m", "m"],
        "response": ["a", "b"],
        "oracle_score": ["0.5", "hunter2"],
    }
    path = tmp_path / "pool.parquet"
    pl.DataFrame(rows).write_parquet(path)
    with pytest.raises(PoolError, match=r"oracle_score must be numeric.*'c2'") as raised:
        load_pool(path)
    assert "hunter2" not in str(raised.value)


# -- what the tool rewrites of the user's -------------------------------------------------------


def test_a_users_dagster_yaml_is_replaced_whole_and_keeps_its_mode(tmp_path):
    folder = tmp_path / "dagster"
    folder.mkdir()
    path = folder / "dagster.yaml"
    path.write_text("telemetry:\n  enabled: false\n")
    path.chmod(0o640)
    before = path.stat().st_ino
    ensure_dagster_home(tmp_path)
    after = path.stat()
    assert after.st_ino != before  # a new file renamed over the old one, not rewritten in place
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert yaml.safe_load(path.read_text())["telemetry"] == {"enabled": False}
    assert [p.name for p in folder.iterdir()] == ["dagster.yaml"]
