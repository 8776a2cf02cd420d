"""Building a policy from config data: both strategy spellings, and clear errors."""

from __future__ import annotations

import math

import pytest

from hypha_sm.roles.worker.core.policy import PolicyError, parse_strategy, policy_from_config

BASE = {"capacity": {"cpu": 16, "memory": 64, "storage": 500, "gpu": 24}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("whole", "whole"),
        ("flexible", "flexible"),
        ({"type": "whole"}, "whole"),
        ({"type": "flexible"}, "flexible"),
    ],
)
def test_strategy_is_accepted_as_a_string_or_a_table(value: object, expected: str) -> None:
    """The seed writes `strategy = "whole"`; the original's config writes `{ type = "whole" }`."""
    assert parse_strategy(value) == expected
    policy = policy_from_config({**BASE, "offer": {"strategy": value}})
    assert policy.offer.strategy == expected


def test_offer_defaults_match_the_original() -> None:
    """Without [offer]: price 100, floor 100, whole."""
    offer = policy_from_config(BASE).offer
    assert (offer.price, offer.floor, offer.strategy) == (100.0, 100.0, "whole")


BAD = [
    ({"offer": {"strategy": "greedy"}}, "offer.strategy = 'greedy'"),
    ({"offer": {"strategy": {"type": "whole", "x": 1}}}, "offer.strategy"),
    ({"offer": {"floor": -1.0}}, "expected finite numbers >= 0"),
    ({"offer": {"price": math.inf}}, "expected finite numbers >= 0"),
    ({"capacity": {"cpu": -2}}, "capacity.cpu = -2.0"),
    ({"capacity": {"gpu": math.nan}}, "capacity.gpu"),
    ({"timings": {"window_wait": 0}}, "timings.window_wait = 0"),
    ({"offer": {"floor": math.inf}}, "expected finite numbers >= 0"),
    ({"capacity": {"memory": 1e9 + 1}}, "capacity.memory = 1000000001.0"),
    ({"timings": {"window_wait": math.inf}}, "timings.window_wait = inf: expected seconds > 0"),
    ({"timings": {"window_limit": 0}}, "timings.window_limit = 0: expected an integer >= 1"),
    ({"max_leases": 0}, "max_leases = 0"),
    ({"dedupe_capacity": 0}, "dedupe_capacity = 0"),
    ({"offer": {"prise": 3}}, "prise"),
]


@pytest.mark.parametrize(("patch", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_policy_names_the_key_and_the_value(patch: dict[str, object], message: str) -> None:
    """Each bad value fails with its key, its value and what is allowed."""
    with pytest.raises(PolicyError) as err:
        policy_from_config({**BASE, **patch})
    assert message in str(err.value)


EDGES = [
    {"capacity": {"cpu": 0, "memory": 1e9, "storage": 0, "gpu": 0}},
    {"offer": {"price": 0.0, "floor": 0.0}},
    {"max_leases": 1},
    {"dedupe_capacity": 1},
    {"max_pending_offers": 1, "lapses_before_backoff": 1, "scheduler_memory": 1},
    {"timings": {"window_limit": 1}},
]


@pytest.mark.parametrize("patch", EDGES, ids=[str(sorted(p)) for p in EDGES])
def test_the_edges_of_each_allowed_range_are_accepted(patch: dict[str, object]) -> None:
    """0 and 1e9 for amounts, 0 for price and floor, 1 for every count: all allowed."""
    policy = policy_from_config({**BASE, **patch})
    for key, value in patch.items():
        got = getattr(policy, key)
        if isinstance(value, dict):
            for field, expected in value.items():
                assert getattr(got, field) == expected
        else:
            assert got == value
