"""The router: the one place that decides which version serves a request.

``route`` runs on every request, so it does only dictionary look-ups and, for a model with a
routing section, one hash or random draw. ``observe`` runs when a request finished: it feeds
the canary and launches shadow copies, after the primary's response exists.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from nereid.server.errors import InvalidArgument, NotFound
from nereid.server.model_version import ModelVersion
from nereid.server.routing.shadow import Admit, run_shadow
from nereid.server.types import InferRequest, InferResponse

if TYPE_CHECKING:
    from nereid.server.repository import ModelRepository


class Router:
    """Routes requests over one repository; ``admit`` queues a request on a version (shadows)."""

    def __init__(self, repository: ModelRepository, admit: Admit) -> None:
        self.repository = repository
        self.admit = admit
        self._shadows: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    def start(self, interval: float = 0.25) -> None:
        """Evaluate canaries on a timer too, so a window ends even when traffic stops."""

        async def tick_forever() -> None:
            while True:
                await asyncio.sleep(interval)
                self.tick()

        self._ticker = asyncio.get_running_loop().create_task(tick_forever())

    async def stop(self) -> None:
        """Stop the timer and let shadow requests in flight finish."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        await self.settle()

    def route(self, request: InferRequest) -> ModelVersion:
        """A named version exactly; otherwise the routing section's choice, else the highest loaded."""
        repository = self.repository
        if request.model_version:
            model = repository.version(request.model_name, request.model_version)
        else:
            entry = repository.entry(request.model_name)
            policy, chosen = entry.routing, None
            if policy is not None:
                number = policy.choose(request)
                if number is None:
                    number = policy.default_version(entry.versions)
                chosen = entry.versions.get(number) if number is not None else None
            model = chosen if chosen is not None else repository.latest(request.model_name)
        repository.touch(request.model_name)
        return model

    def sticky_header(self, name: str) -> str:
        """The header (lower case) whose value pins users of ``name`` to a version, or "".

        Front-ends copy it into the request's parameters under its own name, as Triton's
        ``--http-header-forward-pattern`` does.
        """
        entry = self.repository.models.get(name)
        policy = entry.routing if entry is not None else None
        return policy.sticky_header if policy is not None else ""

    def observe(
        self,
        model: ModelVersion,
        request: InferRequest,
        ok: bool,
        latency_ns: int,
        response: InferResponse | None,
    ) -> None:
        """A request finished on ``model``: count it for the canary, maybe shadow it."""
        entry = self.repository.models.get(model.name)
        policy = entry.routing if entry is not None else None
        if policy is None:
            return
        if policy.canary is not None:
            policy.canary.record(model.version, ok, latency_ns)
        if request.model_version or not ok or response is None or not policy.wants_shadow(model.version):
            return
        shadow = policy.config.shadow
        candidate = entry.versions.get(shadow.version) if entry is not None and shadow else None
        if candidate is None or candidate.decoupled:
            policy.shadow_stats.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(
            run_shadow(policy, candidate, request, response, self.admit)
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    def tick(self) -> None:
        """Let every canary evaluate a window that passed without traffic to trigger it."""
        now = time.monotonic()
        for entry in list(self.repository.models.values()):
            if entry.routing is not None and entry.routing.canary is not None:
                entry.routing.canary.tick(now)

    async def settle(self) -> None:
        """Wait for the shadow requests in flight (tests, shutdown)."""
        while self._shadows:
            await asyncio.gather(*list(self._shadows), return_exceptions=True)

    def state(self, name: str) -> dict[str, Any]:
        """A model's routing as JSON-ready data: shares per version, canary, shadow counts."""
        policy = self.repository.entry(name).routing
        if policy is None:
            return {"model": name, "routing": None}
        shadow, counts = policy.config.shadow, policy.shadow_stats
        return {
            "model": name,
            "shares": {str(v): s for v, s in policy.shares().items()},
            "sticky": policy.config.sticky is not None,
            "canary": policy.canary.state() if policy.canary is not None else None,
            "shadow": None
            if shadow is None
            else {
                "version": shadow.version,
                "fraction": shadow.fraction,
                "agree": counts.agree,
                "disagree": counts.disagree,
                "error": counts.error,
                "skipped": counts.skipped,
            },
        }

    def act(self, name: str, action: str) -> None:
        """``promote`` or ``rollback`` the model's canary by hand."""
        policy = self.repository.entry(name).routing
        canary = policy.canary if policy is not None else None
        if canary is None:
            raise NotFound(f"model '{name}' has no canary in its routing config")
        if action == "promote":
            canary.promote()
        elif action == "rollback":
            canary.rollback()
        else:
            raise InvalidArgument(f"routing action must be 'promote' or 'rollback', got '{action}'")
