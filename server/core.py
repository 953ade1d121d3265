"""The inference core: everything the front-ends can ask, on neutral types.

HTTP and gRPC decode into :class:`~nereid.server.types.InferRequest`, call one method here,
and encode what comes back. Errors leave as :class:`~nereid.server.errors.ServingError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nereid.proto import model_config_pb2 as mc
from nereid.server.catalog import IndexEntry, ModelMetadata, ServerMetadata, TensorMetadata
from nereid.server.errors import (
    Cancelled,
    InvalidArgument,
    ServingError,
    Unavailable,
    Unsupported,
)
from nereid.server.lifecycle import RepositoryPoller
from nereid.server.model_version import ModelVersion
from nereid.server.repository import ModelRepository, parse_version
from nereid.server.resource_limiter import ResourceLimiter
from nereid.server.response_cache import ResponseCache
from nereid.server.responses import ResponseStream, UnaryResponse
from nereid.server.routing.router import Router
from nereid.server.sequence_flags import sequence_flags
from nereid.server.shared_memory import SharedMemoryRegistry
from nereid.server.stats import ModelStatistics
from nereid.server.status.recent import RecentErrors
from nereid.server.tracing import TraceManager
from nereid.server.types import InferRequest, InferResponse, ResponseSender
from nereid.server.validation import int_parameter

SERVER_NAME = "nereid"
SERVER_VERSION = "0.1.0"
# Every name here is an extension that works end to end; GET /v2 reports exactly these.
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "logging",
    "model_configuration",
    "model_repository",
    "parameters",
    "schedule_policy",
    "sequence",
    "statistics",
    "trace",
)
MAX_TIMEOUT_US = 86_400 * 1_000_000  # a day


@dataclass(slots=True)
class CoreOptions:
    strict_readiness: bool = True
    model_control_mode: str = "none"  # none | poll | explicit
    repository_poll_secs: float = 15.0
    #: Bytes all loaded models may take (0: no limit); see ModelRepository.memory_budget.
    model_memory_budget: int = 0
    #: Serve the system shared memory extension (Triton's --allow-client-shm, off by default).
    allow_client_shm: bool = False
    #: Bytes of the response cache (0: none); see nereid.server.response_cache.
    response_cache_bytes: int = 0
    #: Triton's rate limiter over model instances (``--rate-limit execution_count``); None: off.
    resource_limiter: ResourceLimiter | None = None


class InferenceCore:
    """Owns the repository and the request path; front-ends hold one of these."""

    def __init__(self, roots: list[Path], options: CoreOptions | None = None, load_threads: int = 4) -> None:
        self.options = options or CoreOptions()
        size = self.options.response_cache_bytes
        #: Shared by every model whose config enables it (None: no --cache-config).
        self.response_cache = ResponseCache(size) if size else None
        self.repository = ModelRepository(
            roots, core=self, load_threads=load_threads, memory_budget=self.options.model_memory_budget
        )
        self.repository.resource_limiter = self.options.resource_limiter
        self.router = Router(self.repository, self._admit)
        self._poller: RepositoryPoller | None = None
        self._state = "INITIALIZING"
        self._loop: asyncio.AbstractEventLoop | None = None
        # The Monitor stage: sampled requests' spans, and the last failures for the status page.
        self.tracing = TraceManager()
        self.recent_errors = RecentErrors()
        # Client regions for the system shared memory extension; codecs read and write tensors there.
        self.shared_memory = SharedMemoryRegistry(self.options.allow_client_shm)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the core runs on, for models that call it from their threads (BLS, ensembles)."""
        return self._loop

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, models: list[str] | None = None) -> None:
        """Load the repository (every model, or ``models`` in explicit mode)."""
        self._loop = asyncio.get_running_loop()
        await self.repository.load_all(models)
        self.router.start()
        if self.options.model_control_mode == "poll":
            self._poller = RepositoryPoller(self.repository, self.options.repository_poll_secs)
            self._poller.start()
        self._state = "READY"

    def begin_drain(self) -> None:
        """Graceful shutdown has begun: not ready, so balancers stop sending; still live, and requests run."""
        self._state = "DRAINING"

    async def stop(self) -> None:
        self._state = "EXITING"
        if self._poller is not None:
            await self._poller.stop()
        await self.router.stop()
        await self.repository.unload_all()
        self.shared_memory.close()

    # ---- health and metadata -----------------------------------------------------------------

    def live(self) -> bool:
        """Live from start-up (models may still be loading) until the models are unloaded at exit."""
        return self._state != "EXITING"

    def ready(self) -> bool:
        if self._state != "READY":
            return False
        return self.repository.all_ready() if self.options.strict_readiness else True

    def server_metadata(self) -> ServerMetadata:
        extensions: tuple[str, ...] = EXTENSIONS
        if self.shared_memory.enabled:
            shm: tuple[str, ...] = ("system_shared_memory",)
            if self.shared_memory.cuda_driver() is not None:
                shm += ("cuda_shared_memory",)
            extensions = tuple(sorted((*EXTENSIONS, *shm)))
        return ServerMetadata(SERVER_NAME, SERVER_VERSION, extensions)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.lookup(name, version)
        except ServingError:
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """The named version's metadata (listing that version), else the newest's (listing every one)."""
        model = self.repository.lookup(name, version)
        versions = [version] if version else [str(v) for v in sorted(self.repository.entry(name).versions)]
        mbs = model.config.max_batch_size
        return ModelMetadata(
            name=name,
            versions=tuple(versions),
            platform=model.platform,
            inputs=tuple(
                TensorMetadata(s.name, s.datatype, tuple(s.full_shape(mbs))) for s in model.inputs.values()
            ),
            outputs=tuple(
                TensorMetadata(s.name, s.datatype, tuple(s.full_shape(mbs))) for s in model.outputs.values()
            ),
            decoupled=model.decoupled,
        )

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self.repository.lookup(name, version).config

    def statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Every loaded version of every model, of ``name``, or of one version of it.

        A model or version that is not loaded is INVALID_ARG with Triton's wording.
        """
        if not name:
            return [m.stats.snapshot(m.name, m.version_str) for m in self.loaded_models()]
        entry = self.repository.models.get(name)
        loaded = entry.versions if entry is not None else {}
        if not loaded:
            raise InvalidArgument(f"requested model '{name}' is not available")
        numbers = sorted(loaded)
        if version:
            number = parse_version(version)
            if number not in loaded:
                raise InvalidArgument(f"requested model version is not available for model '{name}'")
            numbers = [number]
        return [loaded[v].stats.snapshot(name, loaded[v].version_str) for v in numbers]

    def loaded_models(self) -> list[ModelVersion]:
        return [m for e in self.repository.models.values() for m in e.versions.values()]

    # ---- repository --------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.repository.index(ready_only)

    async def load_model(
        self, name: str, config: mc.ModelConfig | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load or reload ``name``; ``files`` (``file:`` parameters, paths in the model folder) need ``config``."""
        self._require_explicit("load")
        await self.repository.load(name, config=config, files=files)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self._require_explicit("unload")
        await self.repository.unload(name, unload_dependents=unload_dependents)

    def routing_state(self, name: str) -> dict[str, Any]:
        """A model's routing: each version's share, its canary and its shadow counts."""
        return self.router.state(name)

    def routing_action(self, name: str, action: str) -> None:
        """Manual canary ``promote`` (the candidate takes all traffic) or ``rollback`` (none); any mode."""
        self.router.act(name, action)

    def _require_explicit(self, action: str) -> None:
        if self.options.model_control_mode != "explicit":
            raise Unsupported(f"explicit model {action} is not allowed if model control is 'none'")

    # ---- inference ---------------------------------------------------------------------------

    def route(self, request: InferRequest) -> ModelVersion:
        """The one decision of which version serves an inference request.

        A request that names a version gets exactly that version; one that names none follows
        the model's routing config (weights, sticky key, canary), else the highest loaded version.
        """
        return self.router.route(request)

    def _evicted(self, request: InferRequest) -> bool:
        """Whether the model was evicted: it is loaded again before routing (the request waits).

        A plain check, not a coroutine: every request asks, and almost none wait.
        """
        entry = self.repository.models.get(request.model_name)
        return entry is not None and entry.evicted

    def submit(self, request: InferRequest) -> tuple[ModelVersion, ResponseStream]:
        """Validate and queue ``request``; its responses arrive on the returned stream."""
        model = self.route(request)
        stream = ResponseStream(asyncio.get_running_loop())
        self._admit(model, request, stream)
        return model, stream

    def _admit(self, model: ModelVersion, request: InferRequest, sender: ResponseSender) -> None:
        self._check(model, request)
        self._enqueue(model, request, sender)

    def _check(self, model: ModelVersion, request: InferRequest) -> None:
        try:
            model.validate(request)
        except ServingError as exc:
            self.recent_errors.add(model.name, model.version_str, request.id, "INVALID", exc.message)
            raise
        params = request.parameters
        if params:
            request.priority = int_parameter(params, "priority", 0, 2**31) or 0
            request.timeout_us = int_parameter(params, "timeout", 0, MAX_TIMEOUT_US) or 0
            request.sequence = sequence_flags(params) or request.sequence

    def _enqueue(self, model: ModelVersion, request: InferRequest, sender: ResponseSender) -> None:
        request.sender = sender
        try:
            model.scheduler.enqueue(request)
        except Unavailable as exc:
            model.stats.record_request(False, time.monotonic_ns() - request.arrival_ns, None, "REJECTED")
            self._monitor(model, request, "REJECTED", exc.message)
            raise

    async def infer(self, request: InferRequest) -> InferResponse:
        """One request, one response (not for decoupled models); raises the response's error."""
        if self._evicted(request):
            await self.repository.restore(request.model_name)
        model = self.route(request)
        if model.decoupled:
            raise Unsupported(
                f"model '{model.name}' is decoupled; use the streaming API (ModelStreamInfer or generate_stream)"
            )
        self._check(model, request)
        # The response cache hook: a hit skips the queue and the backend.
        cache = self.response_cache if model.cached else None
        lookup = (
            cache.lookup(model.name, model.version_str, request, model.load_id) if cache is not None else None
        )
        if lookup is not None and lookup.response is not None:
            return self._cache_hit(model, request, lookup.response, lookup.ns)
        # The common path: one future resolved once, no per-request stream machinery.
        sender = UnaryResponse(asyncio.get_running_loop())
        self._enqueue(model, request, sender)
        ok, reason, message, response = False, "CANCELED", "request was cancelled", None
        try:
            response = await sender.wait()
            ok = response.error is None
            if not ok:
                reason = _failure_reason(response.error)  # type: ignore[arg-type]
                message = response.error.message  # type: ignore[union-attr]
        except asyncio.CancelledError:
            sender.cancel()
            raise
        finally:
            dispatch = request.dispatch_ns
            queue_ns = dispatch - request.arrival_ns if dispatch else None
            total_ns = time.monotonic_ns() - request.arrival_ns
            model.stats.record_request(ok, total_ns, queue_ns, reason)
            self.router.observe(model, request, ok, total_ns, response)
            if not ok or request.trace is not None:
                self._monitor(model, request, None if ok else reason, message)
        assert response is not None  # set unless the await raised
        if response.error is not None:
            raise response.error
        if cache is not None and lookup is not None:  # Triton's miss time: the lookup and the insertion
            model.stats.record_cache(False, lookup.ns + cache.insert(lookup.key, response))
        return response

    def _cache_hit(
        self, model: ModelVersion, request: InferRequest, response: InferResponse, ns: int
    ) -> InferResponse:
        """A cached response: a successful request without queue or compute time (as Triton counts it)."""
        total_ns = time.monotonic_ns() - request.arrival_ns
        model.stats.record_cache(True, ns)
        model.stats.record_request(True, total_ns, None)
        self.router.observe(model, request, True, total_ns, response)
        if request.trace is not None:
            self._monitor(model, request, None, "")
        return response

    async def stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """Every response of one request, in order; the last one has ``final`` set."""
        if self._evicted(request):
            await self.repository.restore(request.model_name)
        model, stream = self.submit(request)
        ok, reason, message, last = True, "BACKEND", "", None
        try:
            async for response in stream:
                last = response
                if response.error is not None:
                    ok, reason, message = False, _failure_reason(response.error), response.error.message
                if not response.model_name:
                    response.model_name, response.model_version = model.name, model.version_str
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            ok, reason, message = False, "CANCELED", "request was cancelled"
            raise
        finally:
            dispatch = request.dispatch_ns
            queue_ns = dispatch - request.arrival_ns if dispatch else None
            total_ns = time.monotonic_ns() - request.arrival_ns
            model.stats.record_request(ok, total_ns, queue_ns, reason)
            self.router.observe(model, request, ok, total_ns, None if model.decoupled else last)
            if not ok or request.trace is not None:
                self._monitor(model, request, None if ok else reason, message)

    def _monitor(self, model: ModelVersion, request: InferRequest, failure: str | None, message: str) -> None:
        """Off the common path: note a failure for the status page, export a traced request's spans."""
        if failure is not None:
            self.recent_errors.add(model.name, model.version_str, request.id, failure, message)
        if request.trace is not None:
            self.tracing.finish(request, model.version_str, None if failure is None else message)


def _failure_reason(error: ServingError) -> str:
    if isinstance(error, Cancelled):
        return "CANCELED"
    if isinstance(error, Unavailable):
        return "REJECTED"
    return "BACKEND"
