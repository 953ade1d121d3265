"""One model's routing at run time: which version a request that names none goes to.

The choice is a point in [0, 100): a hash of the sticky key when the request carries one
(the same user lands on the same version on every restart and replica), a random draw
otherwise. The point falls into the cumulative weight of a version; under a canary the
candidate owns [0, share) so a user who saw it keeps seeing it as its share grows.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from nereid.server.routing.canary import CanaryController
from nereid.server.routing.config import RoutingConfig
from nereid.server.types import InferRequest


@dataclass(slots=True)
class ShadowStats:
    """Shadow comparisons of one model (read by metrics)."""

    agree: int = 0
    disagree: int = 0
    error: int = 0
    skipped: int = 0  # sampled but not sent (candidate not loaded, primary failed)
    latency_ns: int = 0  # summed shadow request latency


def sticky_point(model: str, key: object) -> float:
    """A stable point in [0, 100) for ``key``: crc32, the same in every process (unlike ``hash``)."""
    return zlib.crc32(f"{model}\x00{key}".encode()) % 10_000 / 100.0


class RoutingPolicy:
    """Runtime state of one model's :class:`RoutingConfig` (choice table, canary, shadow counts)."""

    def __init__(self, model: str, config: RoutingConfig) -> None:
        self.model = model
        self.config = config
        self.canary = CanaryController(model, config.canary) if config.canary else None
        self.shadow_stats = ShadowStats()
        self._sticky_key = (config.sticky.parameter or config.sticky.header) if config.sticky else ""
        self.sticky_header = config.sticky.header if config.sticky else ""
        cumulative, table = 0.0, []
        for version, weight in config.weights:
            cumulative += weight
            table.append((cumulative, version))
        self._table = table

    def point(self, request: InferRequest) -> float:
        params = request.parameters
        if self._sticky_key and params:
            key = params.get(self._sticky_key)
            if key is None and self.sticky_header:
                key = params.get(self.sticky_header)
            if key is not None:
                return sticky_point(self.model, key)
        return random.random() * 100.0

    def choose(self, request: InferRequest) -> int | None:
        """The version this request should go to, or None for the default (highest loaded)."""
        canary = self.canary
        if canary is not None:
            return canary.canary.candidate if self.point(request) < canary.share else canary.canary.stable
        if not self._table:
            return None
        point = self.point(request)
        for threshold, version in self._table:
            if point < threshold:
                return version
        return self._table[-1][1]

    def default_version(self, loaded: Mapping[int, object]) -> int | None:
        """Without weights or a canary: the highest loaded version that is not the shadow's."""
        shadow = self.config.shadow
        if shadow is None:
            return None
        primaries = [v for v in loaded if v != shadow.version]
        return max(primaries) if primaries else None

    def shares(self) -> dict[int, float]:
        """Each version's configured share of unversioned traffic (for metrics and the index)."""
        if self.canary is not None:
            c = self.canary
            return {c.canary.stable: 100.0 - c.share, c.canary.candidate: c.share}
        return dict(self.config.weights)

    def wants_shadow(self, served_version: int) -> bool:
        """Whether to copy a request served by ``served_version`` to the shadow (sampled)."""
        shadow = self.config.shadow
        if shadow is None or served_version == shadow.version:
            return False
        return shadow.fraction >= 1.0 or random.random() < shadow.fraction
