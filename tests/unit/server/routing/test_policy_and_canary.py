"""Choosing versions (weights, sticky hashing) and the canary controller's decisions."""

from __future__ import annotations

import collections

from nereid.server.routing.canary import CanaryController
from nereid.server.routing.config import Canary, RoutingConfig, Sticky
from nereid.server.routing.policy import RoutingPolicy, sticky_point
from nereid.server.types import InferRequest


def _request(**params: object) -> InferRequest:
    return InferRequest("m", [], parameters=dict(params))


def test_weights_split_within_a_statistical_bound():
    policy = RoutingPolicy("m", RoutingConfig(weights=((1, 95.0), (2, 5.0))))
    n = 5000
    counts = collections.Counter(policy.choose(_request()) for _ in range(n))
    assert abs(counts[2] - 0.05 * n) < 5 * (n * 0.05 * 0.95) ** 0.5, counts


def test_sticky_points_are_stable_values_not_process_hashes():
    # crc32 of "m\0alice" — the same in every process, restart and replica.
    assert sticky_point("m", "alice") == sticky_point("m", "alice") == 10.57
    policy = RoutingPolicy(
        "m", RoutingConfig(weights=((1, 50.0), (2, 50.0)), sticky=Sticky(parameter="user"))
    )
    other = RoutingPolicy("m", RoutingConfig(weights=((1, 50.0), (2, 50.0)), sticky=Sticky(parameter="user")))
    users = [f"u{i}" for i in range(200)]
    first = [policy.choose(_request(user=u)) for u in users]
    assert first == [other.choose(_request(user=u)) for u in users]
    assert 60 < first.count(1) < 140


def test_sticky_header_falls_back_when_the_parameter_is_absent():
    policy = RoutingPolicy("m", RoutingConfig(weights=((1, 50.0), (2, 50.0)), sticky=Sticky(header="x-user")))
    assert {policy.choose(_request(**{"x-user": "bob"})) for _ in range(20)} == {
        1 if sticky_point("m", "bob") < 50 else 2
    }


def _controller(**overrides: object) -> CanaryController:
    fields: dict = {"stable": 1, "candidate": 2, "steps": (10.0, 50.0), "window_s": 10.0, "min_requests": 5}
    fields.update(overrides)
    return CanaryController("m", Canary(**fields))


def test_a_healthy_candidate_is_promoted_step_by_step():
    canary = _controller()
    start = canary.window_start
    for step_share in (50.0, 100.0):
        for _ in range(10):
            canary.record(1, True, 1_000_000)
            canary.record(2, True, 1_100_000)
        canary.tick(start := start + 10.0)
        assert canary.share == step_share
    assert canary.status == "promoted"
    assert [d.action for d in canary.decisions] == ["promote", "promote"]


def test_errors_roll_back_at_once_with_the_numbers():
    canary = _controller()
    for _ in range(10):
        canary.record(1, True, 1_000_000)
        canary.record(2, False, 1_000_000)
    canary.tick(canary.window_start + 10.0)
    assert (canary.share, canary.status) == (0.0, "rolled_back")
    numbers = canary.decisions[-1].numbers
    assert numbers["error_rate"] == 1.0 and "error_rate" in numbers["reason"]


def test_slow_candidates_and_disagreement_roll_back():
    slow = _controller(max_p99_ratio=1.5)
    for _ in range(10):
        slow.record(1, True, 1_000_000)
        slow.record(2, True, 5_000_000)
    slow.tick(slow.window_start + 10.0)
    assert slow.status == "rolled_back" and "p99_ratio" in slow.decisions[-1].numbers["reason"]
    wrong = _controller(min_agreement=0.99, steps=(0.0, 100.0))
    for index in range(10):
        wrong.record_agreement(index != 0)
    wrong.tick(wrong.window_start + 10.0)
    assert wrong.status == "rolled_back" and wrong.decisions[-1].numbers["agreement"] == 0.9


def test_too_little_evidence_waits_and_manual_actions_win():
    canary = _controller()
    canary.record(2, True, 1)
    canary.tick(canary.window_start + 10.0)
    assert canary.status == "running" and canary.decisions[-1].action == "wait"
    canary.promote()
    assert (canary.share, canary.status) == (100.0, "promoted")
    canary.rollback()
    assert (canary.share, canary.status) == (0.0, "rolled_back")


def test_a_shadow_only_section_keeps_the_shadow_out_of_the_default_route():
    from nereid.server.routing.config import Shadow

    policy = RoutingPolicy("m", RoutingConfig(shadow=Shadow(version=3)))
    assert policy.choose(_request()) is None
    assert policy.default_version({1: None, 2: None, 3: None}) == 2
    assert policy.wants_shadow(2) and not policy.wants_shadow(3)
