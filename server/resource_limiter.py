"""Triton's rate limiter: model instances run only when the resources they need are free.

With ``--rate-limit execution_count`` each instance's ``instance_group.rate_limiter`` lists the
resources one execution holds (``name``, ``count``, ``global``) and a ``priority``. A resource
is per device (the instance's device) unless ``global``; its copies are what
``--rate-limit-resource name:count[:device]`` declares, else the most any loaded instance asks
for, so every instance can run. An instance thread that has formed a batch waits in
:meth:`Ticket.acquire` until its resources are free and it is the chosen waiter, holds them for
the ``execute`` call, and gives them back. Among waiters that fit, the choice is stride
scheduling on ``priority`` (0 counts as 1): an instance of priority 2 gets half the turns of
one of priority 1, as Triton documents. ``--rate-limit off`` (the default) runs instances as
soon as they have work and ignores ``rate_limiter``, as Triton does.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from nereid.backends.base import InstanceContext
from nereid.proto import model_config_pb2 as mc
from nereid.server.model_config import ConfigError

MODES = ("off", "execution_count")
# A resource: (name, device) for per-device resources, (name, None) for global ones.
Key = tuple[str, int | None]


def parse_resources(specs: Iterable[str]) -> dict[Key, int]:
    """``--rate-limit-resource`` values ``name:count[:device]``; a spec without a device counts
    for every device and for the global resource of that name."""
    declared: dict[Key, int] = {}
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"--rate-limit-resource '{spec}': expected <name>:<count>[:<device>]")
        try:
            count = int(parts[1])
            device = int(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise ValueError(f"--rate-limit-resource '{spec}': count and device must be integers") from None
        if count < 0 or (device is not None and device < 0):
            raise ValueError(f"--rate-limit-resource '{spec}': count and device must not be negative")
        declared[(parts[0], device)] = count
    return declared


def resource_limiter(mode: str, specs: Iterable[str]) -> ResourceLimiter | None:
    """The limiter ``--rate-limit`` and ``--rate-limit-resource`` ask for (None when off)."""
    if mode not in MODES:
        raise ValueError(f"--rate-limit must be 'off' or 'execution_count', got '{mode}'")
    declared = parse_resources(specs)
    return ResourceLimiter(declared) if mode == "execution_count" else None


def hand_back(tickets: list[Ticket]) -> None:
    """Hand back a model version's tickets (at unload, or when its load fails)."""
    if tickets:
        tickets[0].limiter.unregister(tickets)


@dataclass(eq=False)
class Ticket:
    """One instance's resource needs; ``acquire``/``release`` around each execution."""

    limiter: ResourceLimiter
    needs: dict[Key, int]
    priority: int
    #: Stride-scheduling pass: grows by ``priority`` with each turn; the smallest goes first.
    turns: int = 0
    order: int = 0
    waiting: bool = field(default=False)

    def acquire(self) -> None:
        self.limiter._acquire(self)

    def release(self) -> None:
        self.limiter._release(self)


class ResourceLimiter:
    """The server-wide resource pool all models' instances draw from (thread-safe)."""

    def __init__(self, declared: dict[Key, int] | None = None) -> None:
        self.declared = dict(declared or {})
        self._cond = threading.Condition()
        self._tickets: set[Ticket] = set()
        self._global: dict[str, bool] = {}  # resource name -> global, over the loaded tickets
        self._used: dict[Key, int] = {}
        self._waiting: list[Ticket] = []
        self._clock = 0  # the pass of the last granted turn; a new waiter starts there
        self._order = itertools.count()

    def register(
        self, config: mc.ModelConfig, contexts: list[InstanceContext], origin: str
    ) -> dict[int, Ticket]:
        """Tickets by instance index for a model version's instances; ConfigError on a bad
        ``rate_limiter`` (empty or repeated names, a name both global and per device, more
        copies than the server declares)."""
        groups = {group.name: (index, group) for index, group in enumerate(config.instance_group)}
        tickets: dict[int, Ticket] = {}
        with self._cond:
            for context in contexts:
                index, group = groups[context.name]
                if not group.HasField("rate_limiter"):
                    continue
                needs = self._needs(
                    group.rate_limiter, context.device_id, f"{origin}: instance_group[{index}]"
                )
                tickets[context.index] = Ticket(self, needs, max(1, group.rate_limiter.priority))
            self._tickets.update(tickets.values())
        return tickets

    def unregister(self, tickets: Iterable[Ticket]) -> None:
        with self._cond:
            self._tickets.difference_update(tickets)
            self._global = {name: device is None for t in self._tickets for name, device in t.needs}
            self._cond.notify_all()

    def _needs(self, limiter: mc.ModelRateLimiter, device: int, where: str) -> dict[Key, int]:
        needs: dict[Key, int] = {}
        for resource in limiter.resources:
            here = f"{where}.rate_limiter.resources '{resource.name}'"
            if not resource.name:
                raise ConfigError(f"{where}.rate_limiter.resources: 'name' is required")
            key: Key = (resource.name, None if getattr(resource, "global") else device)
            if key in needs:
                raise ConfigError(f"{here}: listed twice")
            known = self._global.get(resource.name)
            if known is not None and known != (key[1] is None):
                raise ConfigError(f"{here}: global in one model and per device in another")
            available = self.declared.get(key, self.declared.get((resource.name, None)))
            if available is not None and resource.count > available:
                raise ConfigError(
                    f"{here}: count {resource.count} is more than the {available} the server declares "
                    "(--rate-limit-resource)"
                )
            needs[key] = resource.count
        for key in needs:
            self._global[key[0]] = key[1] is None
        return needs

    def _capacity(self, key: Key) -> int:
        declared = self.declared.get(key, self.declared.get((key[0], None)))
        if declared is not None:
            return declared
        return max((t.needs.get(key, 0) for t in self._tickets), default=0)

    def _fits(self, ticket: Ticket) -> bool:
        return all(self._used.get(k, 0) + n <= self._capacity(k) for k, n in ticket.needs.items())

    def _chosen(self) -> Ticket | None:
        fitting = [t for t in self._waiting if self._fits(t)]
        return min(fitting, key=lambda t: (t.turns, t.order), default=None)

    def _acquire(self, ticket: Ticket) -> None:
        with self._cond:
            ticket.turns = max(ticket.turns, self._clock)
            ticket.order = next(self._order)
            self._waiting.append(ticket)
            while self._chosen() is not ticket:
                self._cond.wait()
            self._waiting.remove(ticket)
            for key, count in ticket.needs.items():
                self._used[key] = self._used.get(key, 0) + count
            self._clock = ticket.turns
            ticket.turns += ticket.priority
            self._cond.notify_all()  # the next fitting waiter may go too

    def _release(self, ticket: Ticket) -> None:
        with self._cond:
            for key, count in ticket.needs.items():
                self._used[key] -= count
            self._cond.notify_all()
