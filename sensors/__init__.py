"""Sensors and schedules that advance the active rounds (see `sensors.rounds`)."""

from sensors.rounds import SCHEDULES, SENSORS, labels_landed, next_round, nightly_round

__all__ = ["SCHEDULES", "SENSORS", "labels_landed", "next_round", "nightly_round"]
