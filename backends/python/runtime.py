"""Where ``pb_utils.InferenceRequest.exec()`` and the model-loading calls go.

The host binds a :class:`BlsRuntime` around user code: in-process it calls the server's
core, in a stub process it forwards to the parent. Threads a model starts itself (decoupled
models often do) fall back to the process default, which is the last runtime registered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nereid.backends.python.pb_utils import InferenceRequest, InferenceResponse


class BlsRuntime(Protocol):
    def run(self, request: InferenceRequest, decoupled: bool) -> Iterator[InferenceResponse]:
        """Every response of ``request``; exactly one unless ``decoupled``. Errors come back as responses."""
        ...

    def model_ready(self, name: str, version: str) -> bool: ...

    def load_model(self, name: str, config: str) -> None: ...

    def unload_model(self, name: str) -> None: ...


_local = threading.local()
_default: BlsRuntime | None = None


def current() -> BlsRuntime | None:
    return getattr(_local, "runtime", None) or _default


def set_default(runtime: BlsRuntime | None) -> None:
    global _default
    _default = runtime


@contextmanager
def bound(runtime: BlsRuntime | None) -> Iterator[None]:
    """Make ``runtime`` the current one for this thread while user code runs."""
    previous = getattr(_local, "runtime", None)
    _local.runtime = runtime
    try:
        yield
    finally:
        _local.runtime = previous
