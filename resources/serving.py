"""Where the pool and the judge run, set once per deployment through the environment.

| variable | field | e.g. |
|---|---|---|
| `AUF_ENGINE_BACKEND` | `engine.backend` | `openai` |
| `AUF_ENGINE_BASE_URL` | `engine.server.base_url` | `http://vllm-pool:8000/v1` |
| `AUF_ENGINE_API_KEY_ENV` | `engine.server.api_key_env` | `POOL_API_KEY` |
| `AUF_ENGINE_DEVICE` | `engine.device` | `cuda:1` |
| `AUF_JUDGE_BACKEND` | `judge.backend` | `openai` |
| `AUF_JUDGE_MODEL` | `judge.model` | `Qwen/Qwen3-32B` |
| `AUF_JUDGE_BASE_URL` | `judge.server.base_url` | `http://vllm-judge:8000/v1` |
| `AUF_JUDGE_API_KEY_ENV` | `judge.server.api_key_env` | `JUDGE_API_KEY` |
| `AUF_JUDGE_DEVICE` | `judge.device` | `cuda:0` |

Read by the one mechanism of every `AUF_*` setting (`resources.env_settings.from_env`): the
launchpad can still override any of it per run, and a rejected value never stops the code location
from loading; the runs that use the resource fail with the variable's name, and the CLI refuses
to start.
"""

from __future__ import annotations

from collections.abc import Mapping

from resources.engine import GenerationEngine
from resources.env_settings import from_env
from resources.judge import RubricJudge

ENGINE_ENV = {
    "AUF_ENGINE_BACKEND": "backend",
    "AUF_ENGINE_BASE_URL": "server.base_url",
    "AUF_ENGINE_API_KEY_ENV": "server.api_key_env",
    "AUF_ENGINE_DEVICE": "device",
}
JUDGE_ENV = {
    "AUF_JUDGE_BACKEND": "backend",
    "AUF_JUDGE_MODEL": "model",
    "AUF_JUDGE_BASE_URL": "server.base_url",
    "AUF_JUDGE_API_KEY_ENV": "server.api_key_env",
    "AUF_JUDGE_DEVICE": "device",
}


def engine_from_env(environ: Mapping[str, str] | None = None) -> GenerationEngine:
    return from_env(GenerationEngine, ENGINE_ENV, environ)


def judge_from_env(environ: Mapping[str, str] | None = None) -> RubricJudge:
    return from_env(RubricJudge, JUDGE_ENV, environ)
