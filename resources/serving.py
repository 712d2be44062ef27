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

The launchpad can still override any of it per run. A rejected value never stops the code location
from loading: the field keeps its default and the runs that use the resource fail with the
variable's name (as the labelling settings do).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import ValidationError

from resources.engine import GenerationEngine
from resources.judge import RubricJudge

ENGINE_ENV = {
    "AUF_ENGINE_BACKEND": ("backend",),
    "AUF_ENGINE_BASE_URL": ("server", "base_url"),
    "AUF_ENGINE_API_KEY_ENV": ("server", "api_key_env"),
    "AUF_ENGINE_DEVICE": ("device",),
}
JUDGE_ENV = {
    "AUF_JUDGE_BACKEND": ("backend",),
    "AUF_JUDGE_MODEL": ("model",),
    "AUF_JUDGE_BASE_URL": ("server", "base_url"),
    "AUF_JUDGE_API_KEY_ENV": ("server", "api_key_env"),
    "AUF_JUDGE_DEVICE": ("device",),
}


def _from_env(cls, variables: Mapping[str, tuple[str, ...]], env: Mapping[str, str]):
    values: dict = {}
    errors: list[str] = []
    for var, path in variables.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        trial = {path[0]: raw} if len(path) == 1 else {path[0]: {path[1]: raw}}
        try:
            cls(**trial)
        except ValidationError as exc:
            errors.append(f"{var}={raw!r} is invalid ({exc.errors()[0].get('msg', 'invalid')})")
            continue
        if len(path) == 1:
            values[path[0]] = raw
        else:
            values.setdefault(path[0], {})[path[1]] = raw
    return cls(**values, env_errors="; ".join(errors))


def engine_from_env(environ: Mapping[str, str] | None = None) -> GenerationEngine:
    return _from_env(GenerationEngine, ENGINE_ENV, os.environ if environ is None else environ)


def judge_from_env(environ: Mapping[str, str] | None = None) -> RubricJudge:
    return _from_env(RubricJudge, JUDGE_ENV, os.environ if environ is None else environ)
