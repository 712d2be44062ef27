"""One way to read settings from the environment: `AUF_*` variables mapped onto resource fields.

A deployment sets the engine, the judge, the labelling and the budget once with environment
variables (tables: `resources.serving`, `resources.labelling`, `resources.ledger`); the launchpad
can still override any field per run (run config > environment > the code's defaults).

`from_env` checks each variable on its own: a rejected value leaves its field at the default and
its message (variable, value, what is allowed) goes to `env_errors`. So a bad value never stops
the code location from loading, while everything that uses the settings stops with it: a run
fails when the resource is set up, the round sensors and the nightly schedule skip their ticks
(they check `problem` first), and the CLI exits with it before any work.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field, ValidationError


class EnvSettings(dg.ConfigurableResource):
    """A resource whose fields may come from `AUF_*` variables (see `from_env`)."""

    #: what the settings are called in messages ("engine", "labelling", ...)
    SETTINGS_NAME: ClassVar[str] = "these"

    env_errors: str = Field(
        default="",
        description="set from the environment: the AUF_* variables whose values were rejected "
        "(their fields keep the default). While it is not empty, runs that use these settings "
        "fail and the round sensors and the nightly schedule skip, saying why; fix the "
        "variables and reload the code location",
    )

    @property
    def problem(self) -> str | None:
        """Why these settings must not be used, or None (subclasses may add reasons)."""
        problem = self.environment_problem()
        if problem is None:
            return None
        return f"{problem}. Fix or unset them and reload the code location (restart `dagster dev`)"

    def environment_problem(self) -> str | None:
        """The rejected environment values, or None."""
        if not self.env_errors:
            return None
        return f"bad {self.SETTINGS_NAME} settings in the environment: {self.env_errors}"

    def check(self) -> None:
        """Raise ValueError with `problem` when there is one."""
        problem = self.problem
        if problem:
            raise ValueError(problem)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Dagster sets a ConfigurableResource up for sensor and schedule ticks as well as runs.
        # Only a run fails here; a tick has no run, and the sensors skip with `problem`.
        if self.env_errors and context.run is not None:
            raise dg.Failure(description=self.problem)


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return bool in typing.get_args(annotation)
    return False


def _reason(exc: ValidationError, cls: type, path: tuple[str, ...]) -> str:
    info = cls.model_fields.get(path[0]) if len(path) == 1 else None
    if info is not None and _is_bool(info.annotation):
        return "input should be one of 1/0, true/false, yes/no, on/off"
    msg = "; ".join(e["msg"] for e in exc.errors()) or str(exc)
    return msg[:1].lower() + msg[1:]


def _nest(path: tuple[str, ...], value: Any) -> dict:
    out: dict = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def from_env(
    cls: type[dg.ConfigurableResource],
    variables: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    **fixed: Any,
) -> Any:
    """`cls` with the fields the set `variables` name (variable -> field, `a.b` for a nested
    field), on top of `fixed` values. Never raises for an `EnvSettings` class (see the module
    docstring); another class has no `env_errors` to keep a rejected value in, so it raises."""
    env = os.environ if environ is None else environ
    values: dict = dict(fixed)
    errors: list[str] = []
    for var, dotted in variables.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        path = tuple(dotted.split("."))
        trial = _nest(path, raw)
        try:
            cls(**{**fixed, **trial})
        except ValidationError as exc:
            errors.append(f"{var}={raw!r} is invalid ({dotted}: {_reason(exc, cls, path)})")
            continue
        _merge(values, trial)
    if issubclass(cls, EnvSettings):
        return cls(**values, env_errors="; ".join(errors))
    if errors:
        raise ValueError("; ".join(errors))
    return cls(**values)
