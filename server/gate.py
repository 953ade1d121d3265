"""The one front-door check of every call, shared by the HTTP and gRPC front-ends.

Order: Triton's restricted APIs, then the API key and its scopes, then the caller's rate
limits (health calls are never rate limited, so probes keep working under load).
"""

from __future__ import annotations

from collections.abc import Mapping

from nereid.server.auth import ApiGroup, Authorizer, Principal
from nereid.server.ratelimit import RateLimiter


class Gate:
    """``check`` once per call (per message on a stream); raises a ServingError to refuse."""

    def __init__(self, authorizer: Authorizer, limiter: RateLimiter | None = None) -> None:
        self.authorizer = authorizer
        self.limiter = limiter

    @property
    def enabled(self) -> bool:
        return self.authorizer.enabled or self.limiter is not None

    @property
    def counts_tokens(self) -> bool:
        """Whether LLM calls need their token charge worked out (a token limit may apply)."""
        return self.limiter is not None

    def check(
        self,
        headers: Mapping[str, str],
        client: str,
        group: ApiGroup,
        model: str = "",
        tokens: int = 0,
        count: bool = True,
    ) -> Principal:
        """The caller of one call; ``count=False`` authorizes without taking from the limits."""
        principal = self.authorizer.authorize(headers, group, model)
        if count and self.limiter is not None and group is not ApiGroup.HEALTH:
            self.limiter.admit(principal, client, tokens)
        return principal
