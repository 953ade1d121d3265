"""The rate limiter's resource accounting and priority-weighted choice."""

from __future__ import annotations

import threading
import time

import pytest

from nereid.backends.base import InstanceContext
from nereid.proto import model_config_pb2 as mc
from nereid.server.model_config import ConfigError
from nereid.server.resource_limiter import ResourceLimiter, parse_resources, resource_limiter
from nereid.server.settings import parse_settings


def _config(name: str, count: int, priority: int = 1, is_global: bool = True) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name)
    group = config.instance_group.add(name=f"{name}_0", kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    resource = group.rate_limiter.resources.add(name="R", count=count)
    setattr(resource, "global", is_global)
    group.rate_limiter.priority = priority
    return config


def _ticket(limiter: ResourceLimiter, name: str, count: int = 1, priority: int = 1):
    contexts = [InstanceContext(f"{name}_0", 0, "KIND_CPU")]
    return limiter.register(_config(name, count, priority), contexts, name)[0]


def test_flags_parse_as_triton_spells_them() -> None:
    assert parse_resources(["R1:10", "R2:5:0", "R2:8:1"]) == {("R1", None): 10, ("R2", 0): 5, ("R2", 1): 8}
    assert resource_limiter("off", ["R:1"]) is None
    for bad in (["R"], ["R:-1"], ["R:x"], [":1"], ["R:1:-2"]):
        with pytest.raises(ValueError, match="--rate-limit-resource"):
            parse_resources(bad)
    settings = parse_settings(
        ["--model-repository", "/m", "--rate-limit", "execution_count", "--rate-limit-resource", "R:2"]
    )
    assert settings.rate_limit_resource == ["R:2"]
    with pytest.raises(ValueError, match="--rate-limit must be"):
        parse_settings(["--model-repository", "/m", "--rate-limit", "sometimes"])


def test_default_copies_are_the_most_any_instance_asks_for() -> None:
    limiter = ResourceLimiter()
    small, big = _ticket(limiter, "small", 1), _ticket(limiter, "big", 3)
    small.acquire()
    small.release()
    big.acquire()  # 3 copies exist although 'small' asked for one
    big.release()
    with pytest.raises(ConfigError, match="per device in another"):
        limiter.register(
            _config("local", 1, is_global=False), [InstanceContext("local_0", 0, "KIND_CPU")], "x"
        )


def test_priority_weights_the_turns() -> None:
    """Three waiters of priority 1 and 2 behind a held resource: turns go 2:1."""
    limiter = ResourceLimiter()
    holder = _ticket(limiter, "holder")
    first, second = _ticket(limiter, "p1"), _ticket(limiter, "p2", priority=2)
    order: list[str] = []
    holder.acquire()

    def run(ticket, label: str, times: int) -> None:
        for _ in range(times):
            ticket.acquire()
            order.append(label)
            time.sleep(0.01)
            ticket.release()

    threads = [threading.Thread(target=run, args=a) for a in ((first, "p1", 6), (second, "p2", 3))]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    holder.release()
    for thread in threads:
        thread.join()
    assert order[:6].count("p1") == 4, order
