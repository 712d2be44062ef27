"""A run's whole config checked before its first step does any work.

Dagster checks a run config against the schema when the run is launched (types, required keys,
the choices of a `Literal` field such as `selected_pairs.method`), but the values of each op's
`dg.Config` and of each resource are checked only when the step that uses them starts: a bad
`selected_pairs` value would surface after the round's generation. So the round steps call
`check_run_config` first: it builds every op's config and every resource of the run from the run
config, the same way Dagster will, and fails naming the op or resource, the key and the problem.
`auf demo` calls `run_config_problems` the same way before it ingests a prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._config.pythonic_config.resource import ConfigurableResourceFactoryResourceDefinition
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.system_config.objects import ResolvedRunConfig
from pydantic import ValidationError

from resources.labelling import LabellingSettings

# Resource keys that were renamed (old -> new): Dagster would only say "unexpected config entry".
RENAMED_RESOURCES = {"labeling": "labelling"}


def _validation_lines(where: str, exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error.get("loc", ()))
        msg = error.get("msg", "invalid").removeprefix("Value error, ")
        lines.append(f"{where}{'.' + loc if loc else ''}: {msg}")
    return lines


def _config_class(node: Any) -> type[dg.Config] | None:
    compute = getattr(node.definition, "compute_fn", None)
    if compute is None or not hasattr(compute, "has_config_arg") or not compute.has_config_arg():
        return None
    cls = compute.get_config_arg().annotation
    return cls if isinstance(cls, type) and issubclass(cls, dg.Config) else None


def run_config_problems(job: dg.JobDefinition, run_config: Mapping[str, Any] | None) -> list[str]:
    """Every problem of `run_config` for `job`: unknown or mistyped keys (Dagster's check), then
    each op's config and each resource built from it (their own checks). Empty: all fine."""
    run_config = dict(run_config or {})
    problems = [
        f"resources.{old} was renamed to resources.{new}"
        for old, new in RENAMED_RESOURCES.items()
        if old in (run_config.get("resources") or {})
    ]
    if problems:
        return problems
    try:
        resolved = ResolvedRunConfig.build(job, run_config)
    except DagsterInvalidConfigError as exc:
        return [e.message for e in exc.errors] or [str(exc)]
    required: set[str] = set()
    for name, node in job.graph.node_dict.items():
        required |= set(node.definition.required_resource_keys)
        cls = _config_class(node)
        if cls is None or name not in resolved.ops:
            continue
        config = resolved.ops[name].config or {}
        try:
            cls(**cls._get_non_default_public_field_values_cls(config))  # noqa: SLF001
        except ValidationError as exc:
            problems += _validation_lines(f"ops.{name}.config", exc)
    # A resource built from others (`label_source`: labelling, judge, reward_judge) brings theirs.
    for key in list(required):
        if key in job.resource_defs:
            required |= set(job.resource_defs[key].required_resource_keys)
    for key in sorted(required):
        definition = job.resource_defs.get(key)
        if not isinstance(definition, ConfigurableResourceFactoryResourceDefinition):
            continue
        cls = definition.configurable_resource_cls
        config = resolved.resources[key].config if key in resolved.resources else {}
        try:
            resource = cls(**cls._get_non_default_public_field_values_cls(config or {}))  # noqa: SLF001
        except ValidationError as exc:
            problems += _validation_lines(f"resources.{key}.config", exc)
            continue
        env_problem = getattr(resource, "environment_problem", None)
        if env_problem is not None and env_problem():
            problems.append(f"resources.{key}: {env_problem()}")
        if isinstance(resource, LabellingSettings) and resource.people:
            problems += _people_between_halves(job, resource)
    return problems


def _people_between_halves(job: dg.JobDefinition, labelling: LabellingSettings) -> list[str]:
    """People label between selecting a round's pairs and judging them: one run cannot do
    both (it would generate the round, then fail waiting for labels)."""
    ops = set(job.graph.node_dict)
    if {"selected_pairs", "judgements"} <= ops:
        return [
            f"label source {labelling.source!r} waits for people between selected_pairs and "
            "judgements: run the pair_selection job, then labelled_round once the labels are in "
            f"(not {job.name})"
        ]
    return []


def check_run_config(context: dg.AssetExecutionContext) -> None:
    """Fail this step (before any work) when any op or resource of the run is misconfigured."""
    problems = run_config_problems(context.job_def, context.run.run_config)
    if problems:
        raise dg.Failure(
            description="the run's config has bad values; nothing was run. " + "; ".join(problems),
            metadata={"problems": dg.MetadataValue.json(problems)},
        )
