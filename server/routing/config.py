"""The routing section of a model's config: parsed once at load into typed, validated values.

It rides in Triton's free-form ``parameters`` map under the key :data:`ROUTING_KEY`, as a
YAML (or JSON) string, so Triton still loads a Nereid config and Nereid loads Triton's
unchanged. Errors name the field (``parameters['nereid.routing'].weights``) and fail only
that model's load.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import yaml

from nereid.proto import model_config_pb2 as mc
from nereid.server.model_config import ConfigError

ROUTING_KEY = "nereid.routing"
FIELD = f"parameters['{ROUTING_KEY}']"


@dataclass(frozen=True, slots=True)
class Sticky:
    """Where the key that pins a user to a version comes from (a request parameter or header)."""

    parameter: str = ""
    header: str = ""


@dataclass(frozen=True, slots=True)
class Shadow:
    """Copy ``fraction`` of the requests that name no version to ``version``; compare, never return."""

    version: int
    fraction: float = 1.0
    atol: float = 1e-5
    rtol: float = 1e-4


@dataclass(frozen=True, slots=True)
class Canary:
    """Shift traffic from ``stable`` to ``candidate`` step by step while the criteria hold."""

    stable: int
    candidate: int
    steps: tuple[float, ...] = (5.0, 25.0, 100.0)
    window_s: float = 30.0
    min_requests: int = 20
    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.5
    min_agreement: float | None = None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The whole section; ``source`` is the raw text (an unchanged section keeps its runtime state)."""

    weights: tuple[tuple[int, float], ...] = ()
    sticky: Sticky | None = None
    shadow: Shadow | None = None
    canary: Canary | None = None
    source: str = field(default="", compare=False)

    def versions(self) -> set[int]:
        named = {v for v, _ in self.weights}
        if self.shadow:
            named.add(self.shadow.version)
        if self.canary:
            named |= {self.canary.stable, self.canary.candidate}
        return named


def routing_config(config: mc.ModelConfig, origin: str) -> RoutingConfig | None:
    """The model's routing section, or None when it has none; raises ConfigError naming the field."""
    if ROUTING_KEY not in config.parameters:
        return None
    text = config.parameters[ROUTING_KEY].string_value
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: {FIELD} is not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: {FIELD} must be a mapping (weights, sticky, shadow, canary)")
    where = f"{origin}: {FIELD}"
    _only(data, {"weights", "sticky", "shadow", "canary"}, where)
    parsed = RoutingConfig(
        weights=_weights(data.get("weights"), f"{where}.weights"),
        sticky=_sticky(data.get("sticky"), f"{where}.sticky"),
        shadow=_shadow(data.get("shadow"), f"{where}.shadow"),
        canary=_canary(data.get("canary"), f"{where}.canary"),
        source=text,
    )
    if parsed.canary and parsed.weights:
        raise ConfigError(f"{where}: 'weights' and 'canary' are exclusive (the canary sets the split)")
    canary, shadow = parsed.canary, parsed.shadow
    if canary and canary.min_agreement is not None and (shadow is None or shadow.version != canary.candidate):
        raise ConfigError(
            f"{where}.canary.min_agreement needs 'shadow.version' = the candidate ({canary.candidate})"
        )
    return parsed


def check_versions(routing: RoutingConfig, served: list[int], origin: str) -> None:
    """Every version the section names must be one the version policy serves."""
    where = f"{origin}: {FIELD}"
    for version, _ in routing.weights:
        if version not in served:
            raise ConfigError(
                f"{where}.weights names version {version}, which the version policy does not serve {served}"
            )
    if routing.shadow and routing.shadow.version not in served:
        raise ConfigError(
            f"{where}.shadow.version {routing.shadow.version} is not served by the version policy {served}"
        )
    if routing.canary:
        for name in ("stable", "candidate"):
            version = getattr(routing.canary, name)
            if version not in served:
                raise ConfigError(f"{where}.canary.{name} names unknown version {version} (served: {served})")


def _only(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected {sorted(allowed)}")


def _version(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ConfigError(f"{where}: a version must be a non-negative integer, got {value!r}")
    return int(value)


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{where}: must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _weights(value: Any, where: str) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: must map versions to percentages, e.g. {{1: 95, 2: 5}}")
    weights = tuple(
        sorted((_version(k, f"{where} key"), _number(v, f"{where}[{k}]", 0, 100)) for k, v in value.items())
    )
    total = sum(w for _, w in weights)
    if abs(total - 100.0) > 1e-9:
        raise ConfigError(f"{where}: the weights must sum to 100, got {total:g}")
    return weights


def _sticky(value: Any, where: str) -> Sticky | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping with 'parameter' or 'header'")
    _only(value, {"parameter", "header"}, where)
    parameter, header = value.get("parameter", ""), value.get("header", "")
    if not isinstance(parameter, str) or not isinstance(header, str) or not (parameter or header):
        raise ConfigError(f"{where}: set 'parameter' or 'header' to a name")
    return Sticky(parameter, header.lower())


def _shadow(value: Any, where: str) -> Shadow | None:
    if value is None:
        return None
    if not isinstance(value, dict) or "version" not in value:
        raise ConfigError(f"{where}: must be a mapping with at least 'version'")
    _only(value, {"version", "fraction", "atol", "rtol"}, where)
    return Shadow(
        version=_version(value["version"], f"{where}.version"),
        fraction=_number(value.get("fraction", 1.0), f"{where}.fraction", 0, 1),
        atol=_number(value.get("atol", 1e-5), f"{where}.atol", 0, float("inf")),
        rtol=_number(value.get("rtol", 1e-4), f"{where}.rtol", 0, float("inf")),
    )


def _canary(value: Any, where: str) -> Canary | None:
    if value is None:
        return None
    if not isinstance(value, dict) or "candidate" not in value or "stable" not in value:
        raise ConfigError(f"{where}: must be a mapping with at least 'stable' and 'candidate'")
    _only(
        value,
        {
            "stable",
            "candidate",
            "steps",
            "window_s",
            "min_requests",
            "max_error_rate",
            "max_p99_ratio",
            "min_agreement",
        },
        where,
    )
    steps_value = value.get("steps", [5, 25, 100])
    if not isinstance(steps_value, list) or not steps_value:
        raise ConfigError(f"{where}.steps: must be a non-empty list of percentages, e.g. [5, 25, 100]")
    steps = tuple(_number(s, f"{where}.steps[{i}]", 0, 100) for i, s in enumerate(steps_value))
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ConfigError(f"{where}.steps: must increase, got {list(steps)}")
    canary = Canary(
        stable=_version(value["stable"], f"{where}.stable"),
        candidate=_version(value["candidate"], f"{where}.candidate"),
        steps=steps,
        window_s=_number(value.get("window_s", 30.0), f"{where}.window_s", 0.001, 86_400),
        min_requests=int(_number(value.get("min_requests", 20), f"{where}.min_requests", 0, 1e9)),
        max_error_rate=_number(value.get("max_error_rate", 0.01), f"{where}.max_error_rate", 0, 1),
        max_p99_ratio=_number(value.get("max_p99_ratio", 1.5), f"{where}.max_p99_ratio", 0, 1e6),
        min_agreement=(
            None
            if value.get("min_agreement") is None
            else _number(value["min_agreement"], f"{where}.min_agreement", 0, 1)
        ),
    )
    if canary.stable == canary.candidate:
        raise ConfigError(f"{where}: 'stable' and 'candidate' must differ")
    return canary
