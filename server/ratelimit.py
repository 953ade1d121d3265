"""Per-client rate limits: token buckets for requests and, for LLM calls, tokens.

A client is an API key (its name) when keys are on, else the peer address. Each has a request
bucket (``requests_per_second``, holding ``burst``) and, when ``tokens_per_minute`` is set, a
token bucket holding one minute's worth. LLM calls are charged **at admission** an estimate
of what they may cost: the prompt's UTF-8 bytes / 4 (rounded up) plus ``max_tokens`` (or
:data:`DEFAULT_GENERATION_CHARGE` when the request sets none). Charging before the work runs
keeps one fast client from queueing hours of generation; the price is that a request that stops
early pays for tokens it never generated. A charge larger than the bucket waits for a full
bucket instead of failing forever.

Everything runs on the server's one event loop, so nothing here locks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, Metric

from nereid.server.auth import Principal
from nereid.server.errors import RateLimited

#: Tokens charged for an LLM request that does not set max_tokens.
DEFAULT_GENERATION_CHARGE = 256
#: Buckets kept for distinct clients; the oldest is dropped past this (it starts full again).
MAX_CLIENTS = 65536


def token_charge(prompt_bytes: int, max_tokens: int | None) -> int:
    """The admission charge of one LLM request (see the module docstring)."""
    generation = DEFAULT_GENERATION_CHARGE if max_tokens is None else max(0, max_tokens)
    return -(-prompt_bytes // 4) + generation


class TokenBucket:
    """``capacity`` units, refilled at ``rate`` per second; starts full."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` and return 0.0, or take nothing and return the seconds to wait."""
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
        amount = min(amount, self.capacity)
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Default limits for every client (0 turns a limit off)."""

    requests_per_second: float = 0.0
    #: Requests a client may send at once; 0 means max(1, requests_per_second).
    burst: float = 0.0
    tokens_per_minute: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.requests_per_second > 0 or self.tokens_per_minute > 0


class _Client:
    __slots__ = ("owner", "requests", "tokens")

    def __init__(self, owner: Principal, requests: TokenBucket | None, tokens: TokenBucket | None) -> None:
        # The principal the buckets were sized for: a reloaded key file makes new principals.
        self.owner = owner
        self.requests = requests
        self.tokens = tokens


class RateLimiter:
    """Admits or refuses one call of a client; counts refusals for ``/metrics``."""

    def __init__(
        self,
        limits: RateLimits,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.max_clients = max_clients
        self._clients: dict[str, _Client] = {}
        #: Refusals by (principal, limit) where limit is "requests" or "tokens".
        self.refused: dict[tuple[str, str], int] = {}

    def admit(self, principal: Principal, client: str, tokens: int = 0) -> None:
        """Take one request (and ``tokens``) from the caller's buckets or raise RateLimited."""
        identity = principal.name if principal.authenticated else client
        state = self._clients.get(identity)
        now = self.clock()
        if state is None or state.owner is not principal:
            state = self._new_client(identity, principal, now)
        wait = state.requests.take(1, now) if state.requests is not None else 0.0
        if wait:
            self._refuse(principal, "requests", wait)
        if tokens and state.tokens is not None:
            wait = state.tokens.take(tokens, now)
            if wait:
                if state.requests is not None:
                    state.requests.give_back(1)
                self._refuse(principal, "tokens", wait)

    def _new_client(self, identity: str, principal: Principal, now: float) -> _Client:
        rps, burst, tpm = self.limits.requests_per_second, self.limits.burst, self.limits.tokens_per_minute
        override = principal.rate
        if override is not None:
            rps = rps if override.requests_per_second is None else override.requests_per_second
            burst = burst if override.burst is None else override.burst
            tpm = tpm if override.tokens_per_minute is None else override.tokens_per_minute
        requests = TokenBucket(rps, burst or max(1.0, rps), now) if rps > 0 else None
        tokens = TokenBucket(tpm / 60.0, tpm, now) if tpm > 0 else None
        if identity not in self._clients and len(self._clients) >= self.max_clients:
            del self._clients[next(iter(self._clients))]
        state = self._clients[identity] = _Client(principal, requests, tokens)
        return state

    def _refuse(self, principal: Principal, limit: str, wait: float) -> None:
        key = (principal.name, limit)
        self.refused[key] = self.refused.get(key, 0) + 1
        raise RateLimited(f"rate limit exceeded ({limit}); retry after {math.ceil(wait)} s", wait)


class RateLimitCollector:
    """``nereid_rate_limited_total{principal, limit}`` for the metrics registry."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "nereid_rate_limited",
            "Calls refused by a rate limit (principal is the API key name or 'anonymous')",
            labels=["principal", "limit"],
        )
        for (principal, limit), count in sorted(self.limiter.refused.items()):
            family.add_metric([principal, limit], count)
        yield family
