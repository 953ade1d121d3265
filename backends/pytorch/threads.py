"""torch's CPU thread pools, set from config ``parameters`` (Triton's PyTorch backend keys).

``INTRA_OP_THREAD_COUNT`` -> ``torch.set_num_threads`` and ``INTER_OP_THREAD_COUNT`` ->
``torch.set_num_interop_threads``. Both pools belong to the process, not to a model: a later
call would silently retune every model already serving, and the inter-op pool cannot be
resized at all once any parallel work has run. So, like Triton (whose docs say "the value
from the first model config file that specifies this parameter will be used"), the first
model that sets a key wins for the life of the process; a later model asking for another
value gets a warning naming both, and keeps running with the value in force.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

INTRA_OP = "INTRA_OP_THREAD_COUNT"
INTER_OP = "INTER_OP_THREAD_COUNT"


@dataclass
class ThreadSettings:
    """Applies each key once per process; ``setters`` are swappable for tests."""

    setters: dict[str, Callable[[int], None]] = field(
        default_factory=lambda: {INTRA_OP: torch.set_num_threads, INTER_OP: torch.set_num_interop_threads}
    )
    applied: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (value, model)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def apply(self, model: str, requested: dict[str, int]) -> None:
        with self._lock:
            for key, value in requested.items():
                if key in self.applied:
                    current, owner = self.applied[key]
                    if current != value:
                        log.warning(
                            "model '%s': %s=%d ignored; torch's thread pools are process-wide and model '%s' "
                            "already set %d",
                            model,
                            key,
                            value,
                            owner,
                            current,
                        )
                    continue
                try:
                    self.setters[key](value)
                except RuntimeError as exc:  # the inter-op pool is fixed once parallel work started
                    log.warning("model '%s': cannot apply %s=%d: %s", model, key, value, exc)
                    continue
                self.applied[key] = (value, model)
                log.info("model '%s': %s=%d applied to the whole process", model, key, value)


PROCESS_THREADS = ThreadSettings()
