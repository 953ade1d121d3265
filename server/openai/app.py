"""The OpenAI-compatible API (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``).

Mounted on the HTTP front-end as the ``v1`` prefix. A pure translation: requests become one
InferRequest for an LLM model (see :mod:`nereid.server.openai.bridge`), streamed through the core;
non-streaming calls aggregate the same stream. Every failure leaves in OpenAI's error shape.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from nereid.proto import model_config_pb2 as mc
from nereid.server.core import InferenceCore
from nereid.server.errors import NotFound
from nereid.server.http import codec
from nereid.server.http.asgi import Request, Send, allow, respond, send_event, start_events
from nereid.server.http.disconnect import cancel_on_disconnect
from nereid.server.openai.bridge import is_llm, read_delta, to_infer_request
from nereid.server.openai.errors import OpenAIError, as_openai_error, model_not_found
from nereid.server.openai.protocol import CompletionCall, parse_chat, parse_completion
from nereid.server.openai.responses import Reply
from nereid.server.types import InferResponse

log = logging.getLogger(__name__)
DONE = b"data: [DONE]\n\n"


class OpenAIFrontend:
    """The ``v1`` mount: ``await frontend(request, send, parts)`` handles one request."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self.created = int(time.time())

    async def __call__(self, request: Request, send: Send, parts: list[str]) -> None:
        try:
            await self.route(request, send, parts[1:])
        except Exception as exc:  # every failure answers in OpenAI's shape
            error = as_openai_error(exc)
            if error.status >= 500:
                log.warning("OpenAI request %s failed: %s", "/".join(parts), error.message)
            await respond(send, error.status, error.body())

    async def route(self, request: Request, send: Send, rest: list[str]) -> None:
        match rest:
            case ["models"]:
                allow(request.method, "GET")
                models = sorted({m.name for m in self.core.loaded_models() if is_llm(m.config)})
                body = {"object": "list", "data": [self._model_card(name) for name in models]}
                await respond(send, 200, codec.dumps(body))
            case ["models", *name] if name:
                allow(request.method, "GET")
                model = "/".join(name)
                self._llm_config(model)
                await respond(send, 200, codec.dumps(self._model_card(model)))
            case ["completions"]:
                allow(request.method, "POST")
                await self.generate(request, send, parse_completion(await request.json()))
            case ["chat", "completions"]:
                allow(request.method, "POST")
                await self.generate(request, send, parse_chat(await request.json()))
            case _:
                raise OpenAIError(404, f"no route for /v1/{'/'.join(rest)}")

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "nereid"}

    def _llm_config(self, name: str) -> mc.ModelConfig:
        """The config of model ``name`` if it is a ready text generator, else OpenAI's 404."""
        try:
            config = self.core.model_config(name)
        except NotFound:
            raise model_not_found(name) from None
        if not is_llm(config):
            raise model_not_found(name)
        return config

    async def generate(self, request: Request, send: Send, call: CompletionCall) -> None:
        config = self._llm_config(call.model)
        reply = Reply(call, call.model)
        events = self.core.stream(to_infer_request(call, config, reply.id))
        try:
            if call.stream:
                await cancel_on_disconnect(request, self._relay(send, events, reply))
            else:
                body = await cancel_on_disconnect(request, _collect(events, reply))
                await respond(send, 200, codec.dumps(body))
        finally:
            await events.aclose()  # a no-op unless the stream was left early: then it cancels the request

    async def _relay(self, send: Send, events: AsyncIterator[InferResponse], reply: Reply) -> None:
        """Server-sent events; headers go out only after the first response, so early errors are 4xx."""
        response = await anext(events, None)
        if response is not None and response.error is not None:
            await _fail(events, response)
        await start_events(send)
        try:
            for opening in reply.opening_chunks():
                await send_event(send, opening)
            while response is not None:
                if response.error is not None:
                    await _fail(events, response)
                chunk = reply.add(read_delta(response))
                if chunk is not None:
                    await send_event(send, chunk)
                response = await anext(events, None)
            for closing in reply.closing_chunks():
                await send_event(send, closing)
        except Exception as exc:  # after the headers, an error can only travel as an event
            log.debug("OpenAI stream %s failed after its first chunk: %r", reply.id, exc)
            with contextlib.suppress(Exception):  # a failed send: the client is gone, nobody to tell
                await send_event(send, as_openai_error(exc).payload())
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": DONE, "more_body": False})


async def _collect(events: AsyncIterator[InferResponse], reply: Reply) -> dict[str, Any]:
    async for response in events:
        if response.error is not None:
            await _fail(events, response)
        reply.add(read_delta(response))
    return reply.body()


async def _fail(events: AsyncIterator[InferResponse], response: InferResponse) -> None:
    """Raise the response's error; after a final one, first let the stream end (not count as cancelled)."""
    if response.final:
        await anext(events, None)
    assert response.error is not None
    raise response.error
