"""Routing a round's judged pairs to people (`auf_assets.core.routing`)."""

import numpy as np
import pytest

from auf_assets.core.routing import (
    ROUTE_CALIBRATION,
    ROUTE_JUDGE,
    ROUTE_UNSURE,
    RoutingRule,
    least_sure_order,
    route_at_random,
    route_to_people,
)

NAN = float("nan")


def test_budget_sends_the_k_least_confident_and_missing_confidence_first():
    conf = np.array([0.9, 0.55, NAN, 0.99, 0.6, 0.51])
    routes = route_to_people(conf, RoutingRule(budget=3), seed=0)
    assert [i for i, r in enumerate(routes) if r == ROUTE_UNSURE] == [1, 2, 5]
    assert set(routes) == {ROUTE_UNSURE, ROUTE_JUDGE}


def test_threshold_sends_everything_below_it_and_budget_caps_it():
    conf = np.array([0.9, 0.55, NAN, 0.99, 0.6, 0.51])
    below = route_to_people(conf, RoutingRule(threshold=0.7), seed=0)
    assert [i for i, r in enumerate(below) if r == ROUTE_UNSURE] == [1, 2, 4, 5]
    capped = route_to_people(conf, RoutingRule(threshold=0.7, budget=2), seed=0)
    assert [i for i, r in enumerate(capped) if r == ROUTE_UNSURE] == [2, 5]


def test_calibration_takes_at_least_one_confident_pair_and_is_seeded():
    conf = np.linspace(0.5, 1.0, 41)
    rule = RoutingRule(budget=1, calibration_share=0.01)
    routes = route_to_people(conf, rule, seed=3)
    cal = np.flatnonzero(routes == ROUTE_CALIBRATION)
    assert len(cal) == 1 and routes[0] == ROUTE_UNSURE and cal[0] != 0
    assert list(route_to_people(conf, rule, seed=3)) == list(routes)
    share = route_to_people(conf, RoutingRule(budget=1, calibration_share=0.1), seed=3)
    assert (share == ROUTE_CALIBRATION).sum() == 4  # ceil(0.1 * 40 kept pairs)


def test_everything_unsure_leaves_nothing_to_calibrate_and_empty_input_is_fine():
    routes = route_to_people(np.array([0.5, 0.6]), RoutingRule(0.9, calibration_share=0.5), seed=0)
    assert list(routes) == [ROUTE_UNSURE, ROUTE_UNSURE]
    assert len(route_to_people(np.array([]), RoutingRule(budget=2), seed=0)) == 0


def test_equal_confidence_is_broken_by_the_seed_not_the_position():
    firsts = {least_sure_order(np.full(8, 0.75), seed)[0] for seed in range(20)}
    assert len(firsts) > 3


@pytest.mark.parametrize("kwargs", [{"threshold": 1.5}, {"budget": -1}, {"calibration_share": 2.0}])
def test_bad_rules_are_refused(kwargs):
    with pytest.raises(ValueError):
        RoutingRule(**kwargs)


def test_random_routing_baseline():
    mask = route_at_random(10, 4, seed=1)
    assert mask.sum() == 4 and list(mask) == list(route_at_random(10, 4, seed=1))
    with pytest.raises(ValueError):
        route_at_random(3, 4, seed=0)
