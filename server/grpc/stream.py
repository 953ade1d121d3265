"""ModelStreamInfer: many requests in flight on one bidirectional stream.

Each request runs as its own task and puts its responses in one outbox that the RPC handler
writes from (gRPC allows a single writer per stream). Like Triton, every streamed response
carries ``triton_final_response``; responses of non-decoupled models keep request order,
those of decoupled models go out as they come. A failed request, or a message that is not a
valid ModelInferRequest, becomes a response with ``error_message`` and the stream stays open. Closing or cancelling the stream cancels
whatever is still in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from nereid.proto import grpc_service_pb2 as pb
from nereid.server.core import InferenceCore
from nereid.server.errors import InvalidArgument, ServingError, as_serving_error
from nereid.server.grpc import codec
from nereid.server.grpc.codec import parse

log = logging.getLogger(__name__)

FINAL = "triton_final_response"
ENABLE_EMPTY_FINAL = "triton_enable_empty_final_response"

# One outbox entry: the message to write, and the error it reports (None on success).
Outgoing = tuple[pb.ModelStreamInferResponse, ServingError | None]
_DONE = object()


class StreamSession:
    """The state of one ModelStreamInfer call: ``start``, then ``next`` until None, then ``close``."""

    def __init__(
        self, core: InferenceCore, traceparent: str | None = None, tracestate: str | None = None
    ) -> None:
        self.core = core
        # The call's W3C trace context (metadata): each request of the stream is a span under it.
        self._traceparent = traceparent
        self._tracestate = tracestate
        self._outbox: asyncio.Queue[object] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        # Written when the latest non-decoupled request's responses are in the outbox.
        self._ordered_tail: asyncio.Future[None] | None = None

    def start(self, requests: AsyncIterator[bytes | pb.ModelInferRequest]) -> None:
        """Read ``requests`` (messages, or raw bytes parsed here) until the client is done."""
        self._reader = asyncio.create_task(self._read(requests))

    async def next(self) -> Outgoing | None:
        """The next message to write; None once the client is done and every request is answered."""
        item = await self._outbox.get()
        if item is _DONE:
            return None
        return item  # type: ignore[return-value]

    async def close(self) -> None:
        """Cancel the reader and every request still in flight, and wait for them to stop."""
        pending = [t for t in (self._reader, *self._tasks) if t is not None and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _read(self, requests: AsyncIterator[bytes | pb.ModelInferRequest]) -> None:
        try:
            async for item in requests:
                if isinstance(item, bytes):
                    try:
                        self._spawn(parse(pb.ModelInferRequest, item))
                    except InvalidArgument as exc:
                        self._spawn(pb.ModelInferRequest(), exc)
                else:
                    self._spawn(item)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except Exception as exc:  # the call itself broke; the handler ends it and cancels the rest
            log.debug("reading the request stream failed: %r", exc)
        finally:
            self._outbox.put_nowait(_DONE)

    def _spawn(self, msg: pb.ModelInferRequest, invalid: InvalidArgument | None = None) -> None:
        previous = done = None
        if invalid is not None or not self._decoupled(msg):
            previous = self._ordered_tail
            done = self._ordered_tail = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._serve(msg, previous, done, invalid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _decoupled(self, msg: pb.ModelInferRequest) -> bool:
        try:
            return self.core.model_metadata(msg.model_name, msg.model_version).decoupled
        except ServingError:
            return False  # the request fails in _serve, in order

    async def _serve(
        self,
        msg: pb.ModelInferRequest,
        previous: asyncio.Future[None] | None,
        done: asyncio.Future[None] | None,
        invalid: InvalidArgument | None = None,
    ) -> None:
        try:
            if done is None:
                async for item in self._results(msg):
                    self._outbox.put_nowait(item)
                return
            items = [_error(msg, invalid, True)] if invalid else [item async for item in self._results(msg)]
            if previous is not None:
                await asyncio.shield(previous)
            for item in items:
                self._outbox.put_nowait(item)
        finally:
            if done is not None and not done.done():
                done.set_result(None)

    async def _results(self, msg: pb.ModelInferRequest) -> AsyncIterator[Outgoing]:
        """Every message one request produces, errors included."""
        last: pb.ModelInferResponse | None = None
        finished = False
        try:
            request = codec.decode_request(msg, self.core.shared_memory)
            if self._traceparent or self.core.tracing.active:
                request.trace = self.core.tracing.begin(
                    request.model_name, self._traceparent, self._tracestate, "grpc"
                )
            empty_final = request.parameters.pop(ENABLE_EMPTY_FINAL, False) is True
            async for response in self.core.stream(request):
                response.id = response.id or request.id
                finished = response.final
                if response.error is not None:
                    yield _error(msg, response.error, response.final)
                    continue
                try:
                    last = codec.encode_response(response, request, self.core.shared_memory)
                except Exception as exc:
                    yield _error(msg, as_serving_error(exc), response.final)
                    continue
                last.parameters[FINAL].bool_param = response.final
                yield pb.ModelStreamInferResponse(infer_response=last), None
            if empty_final and not finished:
                version = last.model_version if last is not None else msg.model_version
                empty = pb.ModelInferResponse(model_name=msg.model_name, model_version=version, id=msg.id)
                empty.parameters[FINAL].bool_param = True
                yield pb.ModelStreamInferResponse(infer_response=empty), None
        except ServingError as exc:
            yield _error(msg, exc, True)
        except Exception as exc:
            log.exception("stream request for model '%s' failed", msg.model_name)
            yield _error(msg, as_serving_error(exc), True)


def _error(msg: pb.ModelInferRequest, error: ServingError, final: bool) -> Outgoing:
    """A per-request failure on the stream: the message, plus the request's id, model and version."""
    response = pb.ModelInferResponse(model_name=msg.model_name, model_version=msg.model_version, id=msg.id)
    response.parameters[FINAL].bool_param = final
    return pb.ModelStreamInferResponse(error_message=error.message, infer_response=response), error
