"""The ledger: prices, the budget guard (in the sensors and the schedule), and `auf cost`."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import dagster as dg
import polars as pl
import pytest

from auf_assets.core.costs import (
    Budget,
    PriceTable,
    PriceTableError,
    Spending,
    price_rows,
    round_totals,
)
from auf_assets.prompts import prompt_pool
from resources.labelling import LabellingSettings
from resources.ledger import (
    USAGE_COLUMNS,
    StepLedger,
    ledger_from_env,
    ledger_prices,
    readable_prices,
)
from resources.store import DuckDBStore

PRICES = {
    "models": {"judge-70b": {"input": 1.0, "output": 2.0}, "*": {"input": 0.5}},
    "gpu_hour": 3.6,
}


def test_price_table_prices_tokens_and_gpu_time():
    table = PriceTable.from_mapping(PRICES)
    assert table.dollars("judge-70b", 1_000_000, 500_000, 0.0) == pytest.approx(2.0)
    assert table.dollars("other", 2_000_000, 10, 0.0) == pytest.approx(1.0)  # the "*" entry
    assert table.dollars("other", 0, 0, 3600.0) == pytest.approx(3.6)
    assert PriceTable().dollars("x", 10**9, 10**9, 10**6) == 0.0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"model": {}}, "unknown key"),
        ({"models": {"m": {"input": -1}}}, "models.m.input"),
        ({"models": {"m": {"in": 1}}}, "models.m must be"),
        ({"gpu_hour": "lots"}, "gpu_hour: text is not a number"),
    ],
)
def test_bad_price_tables_name_the_entry(bad, message):
    with pytest.raises(PriceTableError, match=message):
        PriceTable.from_mapping(bad)


def test_price_table_file(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  m: {input: 2, output: 4}\ngpu_hour: 1\n")
    assert PriceTable.load(path).price_of("m").output == 4.0
    path.write_text("models: [unclosed")
    with pytest.raises(PriceTableError, match="not valid YAML"):
        PriceTable.load(path)
    with pytest.raises(PriceTableError, match="does not exist"):
        PriceTable.load(tmp_path / "nope.yaml")


PRICE_YAML = "models:\n  m: {input: 2, output: 4}\ngpu_hour: 1\n"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_a_price_table_with_a_byte_order_mark_is_read(tmp_path, encoding):
    path = tmp_path / "prices.yaml"
    path.write_bytes(PRICE_YAML.encode(encoding))  # "utf-16"/"utf-32" write their BOM
    assert PriceTable.load(path).price_of("m").output == 4.0


@pytest.mark.parametrize(
    "content, message",
    [
        (PRICE_YAML.encode("utf-16-le"), "is not UTF-8 text"),  # no BOM
        ("models:\n  caf\u00e9: {input: 1}\n".encode("latin-1"), "is not UTF-8 text"),
        (b"\xff\xfe\x00\xd8", "is not UTF-16 text"),  # a BOM, then a lone surrogate
    ],
)
def test_an_undecodable_price_table_is_a_price_table_error(tmp_path, content, message):
    path = tmp_path / "prices.yaml"
    path.write_bytes(content)
    with pytest.raises(PriceTableError, match=message) as raised:
        PriceTable.load(path)
    assert str(path) in str(raised.value) and "save it as UTF-8" in str(raised.value)
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(PriceTableError, match="cannot be read"):
        PriceTable.load(folder)


def test_an_unreadable_price_table_prices_nothing_and_warns_once(auf_home, monkeypatch, caplog):
    bad = auf_home / "prices.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(PRICE_YAML.encode("utf-16-le"))
    warnings: list[str] = []
    ledger = ledger_from_env()
    for _ in range(3):
        prices = readable_prices(ledger, warnings.append)
        assert not prices.known and prices.source.startswith("unreadable")
    assert len(warnings) == 1 and str(bad) in warnings[0] and "without dollars" in warnings[0]
    # What the round's steps and the release call: no context, the logger; never an exception.
    monkeypatch.setenv("AUF_PRICES", str(auf_home / "other.yaml"))
    (auf_home / "other.yaml").write_bytes(b"\x80 not text")
    with caplog.at_level("WARNING", logger="resources.ledger"):
        assert not ledger_prices().known
    assert "other.yaml is not UTF-8 text" in caplog.text


def test_unknown_dollars_stay_unknown():
    rows = pl.DataFrame(
        [
            {"run_id": "r", "round_id": "round-0001", "step": "s", "actor": "a", "model": "m"}
            | {"requests": 1, "cached": 0, "prompt_tokens": 10, "completion_tokens": 5}
            | {"wall_seconds": 1.0, "gpu_seconds": None, "failures": 0, "retries": 0}
        ],
        schema={k: v for k, v in USAGE_COLUMNS.items() if k not in ("succeeded", "recorded_at")},
    )
    totals = round_totals(price_rows(rows, PriceTable()))
    assert totals["dollars"].to_list() == [None] and totals["gpu_seconds"].to_list() == [None]
    priced = price_rows(rows, PriceTable.from_mapping(PRICES))
    assert round_totals(priced)["dollars"].to_list() == [pytest.approx(10 * 0.5 / 1e6)]


def test_budget_refuses_a_round_that_would_pass_a_maximum():
    budget = Budget(max_dollars=10.0)
    assert budget.refusal(Spending(dollars=6.0), Spending(dollars=3.0), 2) is None
    why = budget.refusal(Spending(dollars=8.0), Spending(dollars=3.0), 2)
    assert "would add about $3.00 (the mean of 2 round(s))" in why and "MAX_DOLLARS" in why
    assert "budget spent" in Budget(max_labels=5).refusal(Spending(labels=5), Spending(), 1)
    assert Budget().refusal(Spending(1e12, 1e12, 1e12), Spending(1, 1, 1), 1) is None


def test_ledger_settings_from_the_environment():
    ledger = ledger_from_env({"AUF_BUDGET_MAX_DOLLARS": "12.5", "AUF_BUDGET_MAX_LABELS": "-3"})
    assert ledger.max_dollars == 12.5 and ledger.max_labels == 0
    assert "AUF_BUDGET_MAX_LABELS='-3' is invalid" in ledger.problem


def _spend(store: DuckDBStore, round_id: str, model: str, prompt: int, completion: int):
    ledger = StepLedger(store, f"run-{round_id}", round_id, "judgements")
    with ledger.actor("judge", model, backend="openai", endpoint="http://x/v1") as usage:
        usage.add(requests=4, prompt_tokens=prompt, completion_tokens=completion)
    return ledger


def test_step_ledger_records_failed_attempts_too(auf_home):
    store = DuckDBStore()
    ledger = StepLedger(store, "run-1", "round-0001", "completions")
    with (
        pytest.raises(RuntimeError),
        ledger.actor("m1", "judge-70b", backend="vllm", device="cuda:0") as u,
    ):
        u.add(requests=2, prompt_tokens=100, failures=1)
        raise RuntimeError("server went away")
    rows = store.usage()
    assert rows.height == 1 and not rows["succeeded"][0] and rows["failures"][0] == 1
    assert rows["gpu_seconds"][0] == pytest.approx(rows["wall_seconds"][0])  # a local GPU
    meta = ledger.metadata(PriceTable.from_mapping(PRICES))
    assert meta["requests"] == 2 and meta["dollars"] == pytest.approx(100 / 1e6, abs=1e-4)


def test_sensors_and_schedule_stop_at_the_budget(auf_home, monkeypatch):
    from sensors.rounds import next_round, nightly_round

    store, labelling = DuckDBStore(), LabellingSettings()
    instance = dg.DagsterInstance.ephemeral()
    dg.materialize([prompt_pool], instance=instance, resources={"store": store})
    prices = auf_home / "prices.yaml"
    prices.write_text(json.dumps(PRICES))
    _spend(store, "round-0001", "judge-70b", 2_000_000, 1_000_000)  # $4
    ctx = lambda: dg.build_sensor_context(  # noqa: E731
        instance=instance, resources={"store": store, "labelling": labelling}
    )
    assert next_round(ctx()).run_requests  # no budget: rounds go on
    monkeypatch.setenv("AUF_BUDGET_MAX_DOLLARS", "7")
    skip = next_round(ctx()).skip_message
    assert "budget: $4.00 dollars used of $7.00" in skip and "would add about $4.00" in skip
    monkeypatch.setenv("AUF_BUDGET_MAX_DOLLARS", "9")
    assert next_round(ctx()).run_requests
    monkeypatch.setenv("AUF_BUDGET_MAX_TOKENS", "3000000")
    assert "budget spent: 3,000,000 tokens" in next_round(ctx()).skip_message
    with (
        dg.instance_for_test() as test_instance,
        dg.build_schedule_context(
            instance=test_instance,
            resources={"store": store, "labelling": labelling},
            scheduled_execution_time=datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc),
        ) as context,
    ):
        assert "budget spent" in nightly_round(context).skip_message
    monkeypatch.setenv("AUF_BUDGET_MAX_TOKENS", "many")
    assert "AUF_BUDGET_MAX_TOKENS='many' is invalid" in next_round(ctx()).skip_message
    # A price table that cannot be read: only a dollar budget, which cannot be checked, stops.
    monkeypatch.setenv("AUF_BUDGET_MAX_TOKENS", "9000000")
    prices.write_bytes(json.dumps(PRICES).encode("utf-16-le"))
    skip = next_round(ctx()).skip_message
    assert f"{prices} is not UTF-8 text" in skip and "cannot be checked" in skip
    monkeypatch.delenv("AUF_BUDGET_MAX_DOLLARS")
    assert next_round(ctx()).run_requests
    prices.unlink()  # no table at all: a dollar budget has nothing to count with
    monkeypatch.setenv("AUF_BUDGET_MAX_DOLLARS", "9")
    assert "no price table" in next_round(ctx()).skip_message


def test_auf_cost_prints_the_priced_ledger(auf_home, capsys):
    from auf_assets.cli.main import main

    store = DuckDBStore()
    store.register_round("round-0001", 1)
    store.register_round("round-0002", 2)
    _spend(store, "round-0001", "judge-70b", 1_000_000, 0)
    _spend(store, "round-0002", "judge-70b", 3_000_000, 1_000_000)
    (auf_home / "prices.yaml").write_text(json.dumps(PRICES))
    assert main(["cost"]) == 0
    out = capsys.readouterr().out
    assert "round-0001: 4 requests, 1,000,000 tokens" in out and "$1.0000" in out
    assert "total: 5,000,000 tokens, $6.0000 over 2 round(s)" in out
    assert main(["cost", "--round", "round-0002", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["dollars"] == pytest.approx(5.0)
    assert main(["cost", "--round", "round-0009"]) == 2


def test_auf_cost_without_a_readable_price_table(auf_home, capsys):
    from auf_assets.cli.main import main

    store = DuckDBStore()
    store.register_round("round-0001", 1)
    _spend(store, "round-0001", "judge-70b", 1_000_000, 0)
    prices = auf_home / "prices.yaml"
    prices.write_bytes(json.dumps(PRICES).encode("utf-16-le"))  # a Windows editor, no BOM
    assert main(["cost"]) == 0
    out = capsys.readouterr().out
    assert f"warning: price table {prices} is not UTF-8 text" in out
    assert "round-0001: 4 requests, 1,000,000 tokens, - GPU-s, 0 failures, -" in out
    assert "$0.0000" not in out and "0.0 GPU-s" not in out
    assert "total: 1,000,000 tokens, $- (no price table) over 1 round(s)" in out
    prices.write_bytes(json.dumps(PRICES).encode("utf-16"))  # with its BOM: read
    assert main(["cost"]) == 0
    assert "round-0001: 4 requests, 1,000,000 tokens, - GPU-s, 0 failures, $1.0000" in (
        capsys.readouterr().out
    )
    assert main(["cost", "--prices", str(auf_home / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().out


def test_price_rows_on_an_empty_ledger():
    empty = pl.DataFrame(schema=USAGE_COLUMNS)
    assert price_rows(empty, PriceTable())["dollars"].to_list() == []
