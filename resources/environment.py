"""Every resource a deployment sets through the environment, and what is wrong with them.

The code location's resources (`auf_assets.definitions`), the CLI and the round sensors build the
environment's settings here, each with the one reader `resources.env_settings.from_env`:

- `engine`, `judge`: `AUF_ENGINE_*`, `AUF_JUDGE_*` (table in `resources.serving`);
- `labelling`: `AUF_LABEL_*`, `AUF_MAX_ROUNDS`, `AUF_ORACLE_POOL`, `AUF_PUBLISH_AFTER_ROUND`,
  `AUF_TRAIN_AFTER_ROUND` (`resources.labelling`);
- `ledger`, the budget the sensors keep: `AUF_PRICES`, `AUF_BUDGET_*` (`resources.ledger`);
- `hub`: `AUF_HUB_REPO` (here; the token `HF_TOKEN` is read when a push starts).

`environment_problems` lists every rejected value, so a command can refuse to start before any
work and a sensor can skip with the message.
"""

from __future__ import annotations

from collections.abc import Mapping

from resources.env_settings import EnvSettings, from_env
from resources.hub import HubDataset
from resources.labelling import labelling_from_env
from resources.ledger import ledger_from_env
from resources.serving import engine_from_env, judge_from_env

HUB_ENV = {"AUF_HUB_REPO": "repo_id"}


def hub_from_env(environ: Mapping[str, str] | None = None) -> HubDataset:
    """The hub resource of the definitions: the repo from AUF_HUB_REPO. The token is read when a
    push starts (HF_TOKEN), so a missing one fails the push step with one sentence that says
    nothing was sent, not the run's configuration with Dagster's "environment variable not set"
    error; it is never stored in config."""
    return from_env(HubDataset, HUB_ENV, environ)


def environment_settings(environ: Mapping[str, str] | None = None) -> dict[str, EnvSettings]:
    """The settings read from `AUF_*` variables, by resource key (`ledger`: the budget)."""
    return {
        "engine": engine_from_env(environ),
        "judge": judge_from_env(environ),
        "labelling": labelling_from_env(environ),
        "ledger": ledger_from_env(environ),
    }


def environment_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per settings object with rejected `AUF_*` values (empty: all fine)."""
    problems = [s.environment_problem() for s in environment_settings(environ).values()]
    return [p for p in problems if p]
