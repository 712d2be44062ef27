"""The `openai` backend against a real HTTP server on 127.0.0.1 serving a tiny model.

Real sockets, the real client, and injected faults: 429 with Retry-After, 500, a timeout, a body
cut short, a server that is not there, a model it does not serve, and a round that fails part-way
and is run again.
"""

from __future__ import annotations

import logging

import dagster as dg
import polars as pl
import pytest

from resources.engine import GenerationEngine, ServerSettings
from resources.judge import RubricJudge
from resources.lm_types import Usage
from resources.openai_api import (
    ChatEndpoint,
    EndpointUnreachable,
    ModelNotServed,
    OpenAILM,
    RetriesExhausted,
    retry_after_seconds,
)
from tests.openai_server import FakeServer

CONVS = [
    [{"role": "user", "content": "Explain photosynthesis."}],
    [{"role": "user", "content": "Write a poem."}],
    [{"role": "user", "content": "Add two numbers."}],
]


@pytest.fixture()
def server(tiny_lm_dir):
    fake = FakeServer(str(tiny_lm_dir))
    with fake.running() as url:
        fake.url = url
        yield fake


def endpoint(url, waits=None, **kw) -> ChatEndpoint:
    kw.setdefault("max_retries", 3)
    kw.setdefault("backoff_s", 0.01)
    sleep = waits.append if waits is not None else (lambda s: None)
    return ChatEndpoint(url, sleep=sleep, **kw)


def test_generation_through_the_server(server):
    lm = OpenAILM("tiny", endpoint(server.url))
    outs = lm.generate(CONVS, max_new_tokens=5, temperature=0.0, top_p=1.0, seed=3)
    assert len(outs) == 3 and all(o.completion_tokens <= 5 for o in outs)
    assert lm.usage.requests == 3 and lm.usage.prompt_tokens > 0
    assert lm.usage.completion_tokens == sum(o.completion_tokens for o in outs)
    body = server.requests[0]["body"]
    assert body["max_tokens"] == 5 and body["chat_template_kwargs"] == {"enable_thinking": False}
    # Same conversation and seed: the same request, whatever order the threads ran in.
    again = lm.generate(CONVS, max_new_tokens=5, temperature=0.0, top_p=1.0, seed=3)
    assert [o.text for o in again] == [o.text for o in outs]


@pytest.mark.parametrize("fault", ["429", "500", "timeout", "truncate"])
def test_transient_faults_are_retried(server, fault):
    server.faults = [fault, fault]
    server.slow_s = 1.5
    waits: list[float] = []
    lm = OpenAILM("tiny", endpoint(server.url, waits, timeout_s=0.5, max_concurrency=1))
    outs = lm.generate(CONVS[:1], max_new_tokens=3, temperature=0.0, top_p=1.0, seed=0)
    assert len(outs) == 1
    assert lm.usage.retries == 2 and lm.usage.failures == 2 and lm.usage.requests == 1
    if fault == "429":
        assert waits == [0.2, 0.2]  # what Retry-After asked for, not the backoff


def test_retry_after_forms():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_retries_run_out_with_a_clear_error(server):
    server.fail_after = 0
    lm = OpenAILM("tiny", endpoint(server.url, max_retries=2))
    with pytest.raises(RetriesExhausted, match="failed 3 times; last: HTTP 500"):
        lm.generate(CONVS[:1], max_new_tokens=3, temperature=0.0, top_p=1.0, seed=0)


def test_a_server_that_is_not_there_is_named(server):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(
        EndpointUnreachable, match=f"no OpenAI-compatible server answers at .*{port}"
    ):
        OpenAILM("tiny", endpoint(f"http://127.0.0.1:{port}/v1"))


def test_a_wrong_model_name_is_named_with_what_is_served(server):
    with pytest.raises(ModelNotServed, match="does not serve model 'gpt-x'; it serves tiny"):
        OpenAILM("gpt-x", endpoint(server.url))


def test_extensions_a_server_rejects_are_dropped(tiny_lm_dir):
    strict = FakeServer(str(tiny_lm_dir), strict=True)
    with strict.running() as url:
        lm = OpenAILM("tiny", endpoint(url))
        outs = lm.generate(CONVS[:2], max_new_tokens=3, temperature=0.0, top_p=1.0, seed=0)
        assert len(outs) == 2
        assert "chat_template_kwargs" not in strict.requests[-1]["body"]
        assert "chat_template_kwargs" in lm.endpoint.unsupported


def test_the_key_is_sent_and_never_shown(server, monkeypatch, caplog):
    monkeypatch.setenv("AUF_TEST_KEY", "sk-very-secret")
    engine = GenerationEngine(
        backend="openai", server=ServerSettings(base_url=server.url, api_key_env="AUF_TEST_KEY")
    )
    server.faults = ["500"]
    with caplog.at_level(logging.DEBUG):
        engine.generate("tiny", CONVS[:1], max_new_tokens=3, temperature=0.0, top_p=1.0, seed=0)
    assert server.requests[-1]["authorization"] == "Bearer sk-very-secret"
    assert "sk-very-secret" not in caplog.text
    assert "sk-very-secret" not in engine.model_dump_json()


def test_judge_through_the_server_reads_the_digits_exactly(server, auf_home):
    judge = RubricJudge(model="tiny", backend="openai", server=ServerSettings(base_url=server.url))
    usage = Usage()
    overall, rated = judge.overall(["Explain photosynthesis."], ["Light."], usage=usage)
    assert len(rated) == 4 and all(r.attempts == 1 and not r.result.failed for r in rated)
    assert 1.0 <= overall[0] <= 5.0
    body = server.requests[-1]["body"]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["logprob_token_ids"]
    assert usage.requests == 4


def test_judge_without_exact_ids_falls_back_to_the_top_k(tiny_lm_dir, auf_home):
    older = FakeServer(str(tiny_lm_dir), exact_token_ids=False)
    with older.running() as url:
        judge = RubricJudge(
            model="tiny", backend="openai", top_k=20, server=ServerSettings(base_url=url)
        )
        _, rated = judge.overall(["Explain photosynthesis."], ["Light."])
        assert len(rated) == 4
        assert "logprob_token_ids" not in older.requests[-1]["body"]


def test_judge_top_k_above_the_servers_cap_is_refused_clearly(server, auf_home):
    judge = RubricJudge(
        model="tiny", backend="openai", top_k=50, server=ServerSettings(base_url=server.url)
    )
    with pytest.raises(ValueError, match="top_k 50 is above the openai backend's max_logprobs 20"):
        judge.overall(["p"], ["r"])


# -- a round through the server ------------------------------------------------------------------


def _round(instance, server, key="round-0001"):
    from auf_assets.checks import ROUND_CHECKS
    from auf_assets.round import ROUND_ASSETS
    from tests.test_round import tiny_resources

    settings = ServerSettings(base_url=server.url, max_retries=1, max_concurrency=2)
    members = [
        {"name": f"srv-{t}", "model": "tiny", "temperature": t, "max_new_tokens": 4}
        for t in (0.0, 0.9)
    ]
    resources = tiny_resources(server.model_dir)
    resources["engine"] = GenerationEngine(backend="openai", server=settings, save_every=2)
    resources["judge"] = RubricJudge(model="tiny", backend="openai", server=settings)
    return dg.materialize(
        [*ROUND_ASSETS, *ROUND_CHECKS],
        instance=instance,
        partition_key=key,
        resources=resources,
        run_config={
            "ops": {
                "round_prompts": {"config": {"batch_size": 4}},
                "completions": {"config": {"members": members}},
                "selected_pairs": {"config": {"method": "drts", "acquisition_width": 1.0}},
            }
        },
        raise_on_error=False,
    )


def test_a_round_through_the_server_resumes_and_keeps_a_ledger(tiny_lm_dir, auf_home):
    from auf_assets.prompts import prompt_pool
    from resources import DuckDBStore

    fake = FakeServer(str(tiny_lm_dir))
    fake.model_dir = tiny_lm_dir
    store = DuckDBStore()
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": store}).success
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    with fake.running() as url:
        fake.url = url
        fake.fail_after = 6  # member 1's 4 responses, then 2 of member 2's: the server breaks
        first = _round(instance, fake)
        assert not first.success
        assert store.count_rows("completions", "round-0001") == 0
        asked_before = len(fake.requests)

        fake.fail_after = None
        second = _round(instance, fake)
        assert second.success
        # Only the 2 missing responses were asked again (judge calls come after).
        gen_bodies = [
            r["body"] for r in fake.requests[asked_before:] if "logprobs" not in r["body"]
        ]
        assert len(gen_bodies) == 2

    rows = store.round_rows("completions", "round-0001")
    assert rows.height == 8 and set(rows["member"]) == {"srv-0.0", "srv-0.9"}
    assert store.count_rows("call_cache") == 0  # cleared once the steps succeeded
    ledger = store.usage(["round-0001"])
    completions = ledger.filter(pl.col("step") == "completions")
    failed = completions.filter(~pl.col("succeeded"))
    assert failed.height == 1 and failed["failures"][0] >= 2 and failed["actor"][0] == "srv-0.9"
    done = completions.filter(pl.col("run_id") == second.run_id)
    assert done["succeeded"].all() and done.height == 2
    assert done.filter(pl.col("actor") == "srv-0.0")["cached"][0] == 4
    assert done.filter(pl.col("actor") == "srv-0.9")["cached"][0] == 2
    assert set(ledger["endpoint"].drop_nulls()) == {url.rstrip("/")}
    judge_rows = ledger.filter(pl.col("step") == "judgements")
    assert judge_rows.height == 1 and judge_rows["requests"][0] > 0
    meta = second.asset_materializations_for_node("completions")[0].metadata
    assert meta["cached_answers"].value == 6 and "ledger" in meta
