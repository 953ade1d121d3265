"""The inference core: everything the front-ends can ask, on neutral types.

HTTP and gRPC decode into :class:`~nereid.server.types.InferRequest`, call one method here,
and encode what comes back. Errors leave as :class:`~nereid.server.errors.ServingError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

from nereid.proto import model_config_pb2 as mc
from nereid.server.catalog import IndexEntry, ModelMetadata, ServerMetadata, TensorMetadata
from nereid.server.errors import (
    Cancelled,
    ServingError,
    Unavailable,
    Unsupported,
)
from nereid.server.model_version import ModelVersion
from nereid.server.repository import ModelRepository
from nereid.server.responses import ResponseStream, UnaryResponse
from nereid.server.sequence_flags import sequence_flags
from nereid.server.stats import ModelStatistics
from nereid.server.types import InferRequest, InferResponse, ResponseSender
from nereid.server.validation import int_parameter

SERVER_NAME = "nereid"
SERVER_VERSION = "0.1.0"
# Every name here is an extension that works end to end; GET /v2 reports exactly these.
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "parameters",
    "schedule_policy",
    "sequence",
    "statistics",
)
MAX_TIMEOUT_US = 86_400 * 1_000_000  # a day


@dataclass(slots=True)
class CoreOptions:
    strict_readiness: bool = True
    model_control_mode: str = "none"  # none | explicit


class InferenceCore:
    """Owns the repository and the request path; front-ends hold one of these."""

    def __init__(self, roots: list[Path], options: CoreOptions | None = None, load_threads: int = 4) -> None:
        self.options = options or CoreOptions()
        self.repository = ModelRepository(roots, core=self, load_threads=load_threads)
        self._state = "INITIALIZING"
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the core runs on, for models that call it from their threads (BLS, ensembles)."""
        return self._loop

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, models: list[str] | None = None) -> None:
        """Load the repository (every model, or ``models`` in explicit mode)."""
        self._loop = asyncio.get_running_loop()
        await self.repository.load_all(models)
        self._state = "READY"

    def begin_drain(self) -> None:
        """Graceful shutdown has begun: not ready, so balancers stop sending; still live, and requests run."""
        self._state = "DRAINING"

    async def stop(self) -> None:
        self._state = "EXITING"
        await self.repository.unload_all()

    # ---- health and metadata -----------------------------------------------------------------

    def live(self) -> bool:
        """Live from start-up (models may still be loading) until the models are unloaded at exit."""
        return self._state != "EXITING"

    def ready(self) -> bool:
        if self._state != "READY":
            return False
        return self.repository.all_ready() if self.options.strict_readiness else True

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, SERVER_VERSION, EXTENSIONS)

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
        """Every loaded version of every model, of ``name``, or of one version of it (as Triton)."""
        if version:
            models = [self.repository.lookup(name, version)]
        elif name:
            entry = self.repository.entry(name)
            models = [entry.versions[v] for v in sorted(entry.versions)]
        else:
            models = self.loaded_models()
        return [m.stats.snapshot(m.name, m.version_str) for m in models]

    def loaded_models(self) -> list[ModelVersion]:
        return [m for e in self.repository.models.values() for m in e.versions.values()]

    # ---- repository --------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.repository.index(ready_only)

    async def load_model(self, name: str, config: mc.ModelConfig | None = None) -> None:
        self._require_explicit("load")
        await self.repository.load(name, config=config)

    async def unload_model(self, name: str) -> None:
        self._require_explicit("unload")
        await self.repository.unload(name)

    def _require_explicit(self, action: str) -> None:
        if self.options.model_control_mode != "explicit":
            raise Unsupported(f"explicit model {action} is not allowed if model control is 'none'")

    # ---- inference ---------------------------------------------------------------------------

    def route(self, request: InferRequest) -> ModelVersion:
        """The one decision of which version serves an inference request.

        A request that names a version gets exactly that version; one that names none gets the
        highest loaded version. Version routing (weighted splits, canaries) replaces the latter.
        """
        if request.model_version:
            return self.repository.version(request.model_name, request.model_version)
        return self.repository.latest(request.model_name)

    def submit(self, request: InferRequest) -> tuple[ModelVersion, ResponseStream]:
        """Validate and queue ``request``; its responses arrive on the returned stream."""
        model = self.route(request)
        stream = ResponseStream(asyncio.get_running_loop())
        self._admit(model, request, stream)
        return model, stream

    def _admit(self, model: ModelVersion, request: InferRequest, sender: ResponseSender) -> None:
        model.validate(request)
        params = request.parameters
        if params:
            request.priority = int_parameter(params, "priority", 0, 2**31) or 0
            request.timeout_us = int_parameter(params, "timeout", 0, MAX_TIMEOUT_US) or 0
            request.sequence = sequence_flags(params) or request.sequence
        request.sender = sender
        try:
            model.scheduler.enqueue(request)
        except Unavailable:
            model.stats.record_request(False, time.monotonic_ns() - request.arrival_ns, None, "REJECTED")
            raise

    async def infer(self, request: InferRequest) -> InferResponse:
        """One request, one response (not for decoupled models); raises the response's error."""
        model = self.route(request)
        if model.decoupled:
            raise Unsupported(
                f"model '{model.name}' is decoupled; use the streaming API (ModelStreamInfer or generate_stream)"
            )
        # The common path: one future resolved once, no per-request stream machinery.
        sender = UnaryResponse(asyncio.get_running_loop())
        self._admit(model, request, sender)
        ok, reason = False, "CANCELED"
        try:
            response = await sender.wait()
            ok = response.error is None
            if not ok:
                reason = _failure_reason(response.error)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            sender.cancel()
            raise
        finally:
            dispatch = request.dispatch_ns
            queue_ns = dispatch - request.arrival_ns if dispatch else None
            model.stats.record_request(ok, time.monotonic_ns() - request.arrival_ns, queue_ns, reason)
        if response.error is not None:
            raise response.error
        return response

    async def stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """Every response of one request, in order; the last one has ``final`` set."""
        model, stream = self.submit(request)
        ok, reason = True, "BACKEND"
        try:
            async for response in stream:
                if response.error is not None:
                    ok, reason = False, _failure_reason(response.error)
                if not response.model_name:
                    response.model_name, response.model_version = model.name, model.version_str
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            ok, reason = False, "CANCELED"
            raise
        finally:
            dispatch = request.dispatch_ns
            queue_ns = dispatch - request.arrival_ns if dispatch else None
            model.stats.record_request(ok, time.monotonic_ns() - request.arrival_ns, queue_ns, reason)


def _failure_reason(error: ServingError) -> str:
    if isinstance(error, Cancelled):
        return "CANCELED"
    if isinstance(error, Unavailable):
        return "REJECTED"
    return "BACKEND"
