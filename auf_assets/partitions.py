"""One partition per active round: `round-0001`, `round-0002`, ...

Rounds are ordered by their index, never by name: `round-10000` comes after `round-9999`.
"""

from __future__ import annotations

import re

import dagster as dg

rounds_partitions = dg.DynamicPartitionsDefinition(name="rounds")

_ROUND_KEY = re.compile(r"^round-(\d{4,})$")


def round_key(index: int) -> str:
    if index < 1:
        raise ValueError(f"rounds are numbered from 1, got {index}")
    return f"round-{index:04d}"


def round_index(key: str) -> int:
    match = _ROUND_KEY.match(key)
    if not match:
        raise ValueError(f"{key!r} is not a round partition key (expected e.g. 'round-0001')")
    return int(match.group(1))


def registered_rounds(instance: dg.DagsterInstance) -> list[str]:
    keys = instance.get_dynamic_partitions(rounds_partitions.name)
    return sorted((k for k in keys if _ROUND_KEY.match(k)), key=round_index)


def next_round_key(instance: dg.DagsterInstance) -> str:
    rounds = registered_rounds(instance)
    return round_key(round_index(rounds[-1]) + 1 if rounds else 1)
