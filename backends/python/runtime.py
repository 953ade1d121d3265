"""Where ``pb_utils.InferenceRequest.exec()`` and the model-loading calls go.

The host binds a :class:`BlsRuntime` around user code: in-process it calls the server's
core, in a stub process it forwards to the parent. Threads a model starts itself (decoupled
models often do) fall back to the process default, which is the last runtime registered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

# The request and response types are pb_utils', which calls current(); naming them as type
# parameters keeps this module free of pb_utils, so the two do not import each other.
Request = TypeVar("Request", contravariant=True)
Response = TypeVar("Response", covariant=True)


class BlsRuntime(Protocol[Request, Response]):
    def run(self, request: Request, decoupled: bool) -> Iterator[Response]:
        """Every response of ``request``; exactly one unless ``decoupled``. Errors come back as responses."""
        ...

    def model_ready(self, name: str, version: str) -> bool: ...

    def load_model(self, name: str, config: str) -> None: ...

    def unload_model(self, name: str) -> None: ...


AnyRuntime = BlsRuntime[Any, Any]


_local = threading.local()
_default: AnyRuntime | None = None


def current() -> AnyRuntime | None:
    return getattr(_local, "runtime", None) or _default


def set_default(runtime: AnyRuntime | None) -> None:
    global _default
    _default = runtime


@contextmanager
def bound(runtime: AnyRuntime | None) -> Iterator[None]:
    """Make ``runtime`` the current one for this thread while user code runs."""
    previous = getattr(_local, "runtime", None)
    _local.runtime = runtime
    try:
        yield
    finally:
        _local.runtime = previous
