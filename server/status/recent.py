"""The last failed requests, for the status page (recorded on the failure path only)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RecentError:
    time: float  # seconds since the epoch
    model: str
    version: str
    request_id: str
    reason: str  # Triton's failure reason: REJECTED, CANCELED, BACKEND
    message: str


class RecentErrors:
    """A bounded, newest-last list of failures; appended on the event loop."""

    def __init__(self, limit: int = 50) -> None:
        self._items: deque[RecentError] = deque(maxlen=limit)

    def add(self, model: str, version: str, request_id: str, reason: str, message: str) -> None:
        self._items.append(RecentError(time.time(), model, version, request_id, reason, message[:500]))

    def items(self) -> list[RecentError]:
        return list(self._items)
