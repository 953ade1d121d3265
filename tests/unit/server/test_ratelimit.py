"""server/ratelimit.py: the token bucket, per-client limits and the token charge."""

from __future__ import annotations

import pytest

from nereid.server.auth import ANONYMOUS, Principal, RateOverride
from nereid.server.errors import RateLimited
from nereid.server.ratelimit import (
    DEFAULT_GENERATION_CHARGE,
    RateLimitCollector,
    RateLimiter,
    RateLimits,
    TokenBucket,
    token_charge,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_refills_and_says_how_long_to_wait():
    bucket = TokenBucket(rate=2.0, capacity=4.0, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(1, 0.0) == pytest.approx(0.5)
    assert bucket.take(1, 0.5) == 0.0
    assert bucket.take(1, 100.0) == 0.0 and bucket.level == pytest.approx(3.0)  # capped at capacity
    # A charge bigger than the bucket waits for a full bucket instead of never passing.
    assert bucket.take(10, 100.0) == pytest.approx(0.5)
    assert bucket.take(10, 100.5) == 0.0


def test_limiter_refuses_with_retry_after_and_counts():
    clock = Clock()
    limiter = RateLimiter(RateLimits(requests_per_second=1.0, burst=2), clock)
    limiter.admit(ANONYMOUS, "10.0.0.1")
    limiter.admit(ANONYMOUS, "10.0.0.1")
    with pytest.raises(RateLimited) as info:
        limiter.admit(ANONYMOUS, "10.0.0.1")
    assert info.value.retry_after_s == pytest.approx(1.0)
    limiter.admit(ANONYMOUS, "10.0.0.2")  # another address, another bucket
    clock.now += 1.0
    limiter.admit(ANONYMOUS, "10.0.0.1")
    assert limiter.refused == {("anonymous", "requests"): 1}
    [family] = RateLimitCollector(limiter).collect()
    assert family.name == "nereid_rate_limited"
    assert [(s.labels, s.value) for s in family.samples if s.name.endswith("_total")] == [
        ({"principal": "anonymous", "limit": "requests"}, 1)
    ]


def test_keys_share_a_bucket_across_addresses_and_override_limits():
    clock = Clock()
    limiter = RateLimiter(RateLimits(requests_per_second=1.0), clock)
    key = Principal("app", authenticated=True, rate=RateOverride(requests_per_second=0))
    for address in ("a", "b", "c"):
        limiter.admit(key, address)  # no request limit for this key
    tight = Principal("tight", authenticated=True)
    limiter.admit(tight, "a")
    with pytest.raises(RateLimited):
        limiter.admit(tight, "b")


def test_token_budget_refunds_the_request_when_tokens_refuse():
    clock = Clock()
    limiter = RateLimiter(RateLimits(requests_per_second=0.001, burst=2, tokens_per_minute=60), clock)
    limiter.admit(ANONYMOUS, "a", tokens=60)
    with pytest.raises(RateLimited, match="tokens") as info:
        limiter.admit(ANONYMOUS, "a", tokens=30)
    assert info.value.retry_after_s == pytest.approx(30.0)
    clock.now += 30
    limiter.admit(ANONYMOUS, "a", tokens=30)  # the refused call's request came back


def test_token_charge():
    assert token_charge(0, 10) == 10
    assert token_charge(9, 10) == 13
    assert token_charge(4, None) == 1 + DEFAULT_GENERATION_CHARGE


def test_client_table_is_bounded():
    limiter = RateLimiter(RateLimits(requests_per_second=1.0), Clock(), max_clients=3)
    for address in "abcde":
        limiter.admit(ANONYMOUS, address)
    assert len(limiter._clients) == 3
