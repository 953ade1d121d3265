"""The response cache (Triton's ``--cache-config local,size=N`` with ``response_cache { enable: true }``).

One LRU of successful responses shared by every model, bounded by the bytes of the output
tensors it holds. A request's key is a digest of the model name, the version that serves it,
every input's name, datatype, shape and bytes, the requested output names, and the request
parameters that can change the answer; parameters that only steer scheduling or encoding
(priority, timeout, sequence flags, ``binary_data*``) are left out. A hit is answered from
the cache without queueing or executing; a miss runs as usual and its response is stored.

As in Triton, only models of the default or dynamic batch scheduler use the cache: a decoupled
model that enables it fails to load (``model_config.validate``), while a sequence model or an
ensemble that enables it loads and serves uncached, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from nereid.proto import model_config_pb2 as mc
from nereid.server.types import InferRequest, InferResponse, Tensor

log = logging.getLogger(__name__)

#: Request parameters that cannot change a response: scheduling, sequence routing and encoding.
IGNORED_PARAMETERS = frozenset(
    {
        "priority",
        "timeout",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "binary_data_output",
        "triton_enable_empty_final_response",
    }
)
#: Output parameters that only choose an encoding.
IGNORED_OUTPUT_PARAMETERS = frozenset({"binary_data"})


def parse_cache_config(specs: list[str]) -> int:
    """The cache size in bytes from ``--cache-config`` values (0: no cache); raises ValueError.

    Each value is Triton's ``<cache>,<key>=<value>[,...]``; only the ``local`` cache exists here
    and it takes one key, ``size`` (bytes, positive).
    """
    size = 0
    for spec in specs:
        name, _, rest = spec.partition(",")
        name = name.strip()
        if name != "local":
            raise ValueError(
                f"--cache-config: unknown cache implementation '{name}' in '{spec}' (Nereid has 'local')"
            )
        if not rest:
            raise ValueError(f"--cache-config: '{spec}' sets no key; use local,size=BYTES")
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            if not sep or key.strip() != "size":
                raise ValueError(
                    f"--cache-config: unknown key '{key.strip()}' for the local cache (it takes size=BYTES)"
                )
            try:
                size = int(value.strip())
            except ValueError:
                raise ValueError(
                    f"--cache-config: size must be a whole number of bytes, got '{value}'"
                ) from None
            if size <= 0:
                raise ValueError(f"--cache-config: size must be a positive number of bytes, got {size}")
    return size


def cache_wanted(config: mc.ModelConfig, name: str, server_cache: bool) -> bool:
    """Whether a version of this config uses the cache; logs why an enabled one does not."""
    if not config.response_cache.enable:
        return False
    reason = ""
    if config.platform == "ensemble":
        reason = "top-level ensemble requests are not cached (its steps may be)"
    elif config.WhichOneof("scheduling_choice") == "sequence_batching":
        reason = "the sequence batcher does not support response caching"
    elif not server_cache:
        reason = "the server has no response cache (start it with --cache-config local,size=BYTES)"
    if reason:
        log.warning("model '%s' enables response_cache but is served uncached: %s", name, reason)
        return False
    return True


@dataclass(slots=True)
class _Entry:
    outputs: list[Tensor]
    parameters: dict[str, Any]
    size: int


@dataclass(slots=True)
class Lookup:
    """One request's cache key and, on a hit, its response; ``ns`` is the time the lookup took."""

    key: bytes
    response: InferResponse | None
    ns: int


class ResponseCache:
    """A thread-safe LRU of responses bounded by ``capacity`` bytes of output data."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, name: str, version: str, request: InferRequest, load_id: int = 0) -> Lookup:
        """Hash ``request`` and look it up; a hit's response carries the request's id.

        ``load_id`` tells loads of one version apart: a reloaded version never sees the answers
        of the files it replaced (their entries age out of the LRU).
        """
        start = time.perf_counter_ns()
        key = request_key(name, version, request, load_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
            else:
                self._entries.move_to_end(key)
                self.hits += 1
        response = None
        if entry is not None:
            outputs = [Tensor(t.name, t.datatype, t.shape, t.data, dict(t.parameters)) for t in entry.outputs]
            response = InferResponse(name, version, request.id, outputs, dict(entry.parameters))
        return Lookup(key, response, time.perf_counter_ns() - start)

    def insert(self, key: bytes, response: InferResponse) -> int:
        """Store a successful response (its arrays copied); returns the nanoseconds it took."""
        start = time.perf_counter_ns()
        outputs = [
            Tensor(t.name, t.datatype, t.shape, np.array(t.data, copy=True), dict(t.parameters))
            for t in response.outputs
        ]
        size = len(key) + sum(_nbytes(t.data) for t in outputs)
        if size > self.capacity:
            log.debug("response of %d bytes does not fit the %d-byte cache; not cached", size, self.capacity)
            return time.perf_counter_ns() - start
        entry = _Entry(outputs, dict(response.parameters), size)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.used -= old.size
            while self._entries and self.used + size > self.capacity:
                _, evicted = self._entries.popitem(last=False)
                self.used -= evicted.size
                self.evictions += 1
            self._entries[key] = entry
            self.used += size
        return time.perf_counter_ns() - start


def request_key(name: str, version: str, request: InferRequest, load_id: int = 0) -> bytes:
    """A 128-bit digest of everything in ``request`` that can change its response."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{name}\0{version}\0{load_id}\0".encode())
    for tensor in sorted(request.inputs, key=lambda t: t.name):
        digest.update(f"{tensor.name}\0{tensor.datatype}\0{tensor.shape}\0".encode())
        _hash_data(digest, tensor.data)
    for output in sorted(request.outputs, key=lambda o: o.name):
        params = {k: v for k, v in output.parameters.items() if k not in IGNORED_OUTPUT_PARAMETERS}
        digest.update(f"out\0{output.name}\0{sorted(params.items())!r}\0".encode())
    params = {k: v for k, v in request.parameters.items() if k not in IGNORED_PARAMETERS}
    if params:
        digest.update(f"params\0{sorted(params.items(), key=lambda kv: kv[0])!r}".encode())
    return digest.digest()


def _hash_data(digest: Any, data: np.ndarray) -> None:
    if data.dtype == object:
        for item in data.reshape(-1):
            raw = item.encode() if isinstance(item, str) else bytes(item)
            digest.update(len(raw).to_bytes(4, "little"))
            digest.update(raw)
    else:
        digest.update(np.ascontiguousarray(data).data)


def _nbytes(data: np.ndarray) -> int:
    if data.dtype == object:
        return sum(4 + len(item) for item in data.reshape(-1))
    return int(data.nbytes)
