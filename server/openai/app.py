"""The OpenAI-compatible API (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, ``/v1/embeddings``).

Mounted on the HTTP front-end as the ``v1`` prefix. A pure translation: a call becomes one
InferRequest per generation (``n``/``best_of`` candidates of each prompt; see
:mod:`nereid.server.openai.bridge`), streamed through the core and merged; non-streaming calls aggregate the
same streams. Model ids are names or ``name:version``. Every failure leaves in OpenAI's error shape.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from nereid.proto import model_config_pb2 as mc
from nereid.server.core import InferenceCore
from nereid.server.embedding import is_embedding
from nereid.server.errors import NotFound
from nereid.server.http import codec
from nereid.server.http.asgi import Request, Send, allow, respond, send_event, start_events
from nereid.server.http.disconnect import cancel_on_disconnect
from nereid.server.http.observe import begin_trace
from nereid.server.openai.bridge import (
    backend_echoes,
    check_fan_out,
    is_llm,
    read_delta,
    split_model,
    to_infer_request,
)
from nereid.server.openai.embeddings import create_embeddings, parse_embedding
from nereid.server.openai.errors import OpenAIError, as_openai_error, bad_request, model_not_found
from nereid.server.openai.fanout import merge
from nereid.server.openai.fields import obj
from nereid.server.openai.protocol import CompletionCall, parse_chat, parse_completion
from nereid.server.openai.responses import Reply
from nereid.server.openai.tokenize import tokenizer_body, tokenizer_request
from nereid.server.types import InferResponse

log = logging.getLogger(__name__)
Events = AsyncGenerator[tuple[int, InferResponse], None]
DONE = b"data: [DONE]\n\n"


class OpenAIFrontend:
    """The ``v1`` mount: ``await frontend(request, send, parts)`` handles one request."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self.created = int(time.time())

    async def __call__(self, request: Request, send: Send, parts: list[str]) -> None:
        try:
            if parts[0] in ("tokenize", "detokenize"):  # vLLM serves these at the root
                allow(request.method, "POST")
                await self.tokenizer_task(send, parts[0], await request.json())
                return
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
                body = {"object": "list", "data": [self._model_card(i) for i in self._model_ids()]}
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
            case ["embeddings"]:
                allow(request.method, "POST")
                call = parse_embedding(await request.json())
                config = self._llm_config(call.model)
                if not is_embedding(config):  # vLLM's answer for a model without the task
                    raise bad_request("The model does not support Embeddings API", "model")
                await respond(send, 200, codec.dumps(await create_embeddings(self.core, config, call)))
            case _:
                raise OpenAIError(404, f"no route for /v1/{'/'.join(rest)}")

    def _model_ids(self) -> list[str]:
        """Every text generator by name (the core picks its version) and each loaded version as ``name:v``."""
        versions: dict[str, list[int]] = {}
        for m in self.core.loaded_models():
            if is_llm(m.config) or is_embedding(m.config):
                versions.setdefault(m.name, []).append(m.version)
        return [
            i for name in sorted(versions) for i in (name, *(f"{name}:{v}" for v in sorted(versions[name])))
        ]

    def _model_card(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": "nereid"}

    def _llm_config(self, model: str) -> mc.ModelConfig:
        """The config of ``model`` (``name`` or ``name:version``) if it is a ready text generator or embedding
        model, else 404."""
        try:
            config = self.core.model_config(*split_model(model))
        except NotFound:
            raise model_not_found(model) from None
        if not (is_llm(config) or is_embedding(config)):
            raise model_not_found(model)
        return config

    async def tokenizer_task(self, send: Send, kind: str, body: Any) -> None:
        model = obj(body).get("model")
        if not isinstance(model, str) or not model:
            raise OpenAIError(400, "'model' is required and must be a non-empty string", "model")
        infer_request = tokenizer_request(kind, body, self._llm_config(model))
        response = None
        async for response in self.core.stream(infer_request):
            if response.error is not None:
                raise response.error
        assert response is not None
        await respond(send, 200, codec.dumps(tokenizer_body(kind, response, infer_request)))

    async def generate(self, request: Request, send: Send, call: CompletionCall) -> None:
        config = self._llm_config(call.model)
        if is_embedding(config):
            raise bad_request(
                f"The model does not support {'Chat ' if call.chat else ''}Completions API", "model"
            )
        check_fan_out(call, config)
        echoes = [
            p if call.echo and isinstance(p, str) and not backend_echoes(config) else "" for p in call.prompts
        ]
        reply = Reply(call, call.model, echoes)
        ids = [reply.id] if call.fan_out == 1 else [f"{reply.id}-{i}" for i in range(call.fan_out)]
        infer_requests = [to_infer_request(call, config, ids[i], i) for i in range(call.fan_out)]
        for infer_request in infer_requests:  # each generation is a traced request when sampled
            infer_request.trace = begin_trace(self.core, request, call.model)
        events = merge([self.core.stream(r) for r in infer_requests])
        try:
            if call.stream:
                await cancel_on_disconnect(request, self._relay(send, events, reply, call.fan_out))
            else:
                body = await cancel_on_disconnect(request, _collect(events, reply))
                await respond(send, 200, codec.dumps(body))
        finally:
            await events.aclose()  # a no-op unless the streams were left early: then it cancels them

    async def _relay(self, send: Send, events: Events, reply: Reply, count: int) -> None:
        """Server-sent events; headers go out only once every generation answered, so early errors are 4xx."""
        first: list[tuple[int, InferResponse]] = []
        started: set[int] = set()
        async for index, response in events:
            if response.error is not None:
                raise response.error
            first.append((index, response))
            started.add(index)
            if len(started) == count:
                break
        await start_events(send)
        try:
            for opening in reply.opening_chunks():
                await send_event(send, opening)
            for index, response in first:
                await self._send_delta(send, reply, index, response)
            async for index, response in events:
                await self._send_delta(send, reply, index, response)
            for closing in reply.closing_chunks():
                await send_event(send, closing)
        except Exception as exc:  # after the headers, an error can only travel as an event
            log.debug("OpenAI stream %s failed after its first chunk: %r", reply.id, exc)
            with contextlib.suppress(Exception):  # a failed send: the client is gone, nobody to tell
                await send_event(send, as_openai_error(exc).payload())
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": DONE, "more_body": False})

    @staticmethod
    async def _send_delta(send: Send, reply: Reply, index: int, response: InferResponse) -> None:
        if response.error is not None:
            raise response.error
        chunk = reply.add(read_delta(response, index))
        if chunk is not None:
            await send_event(send, chunk)


async def _collect(events: Events, reply: Reply) -> dict[str, Any]:
    async for index, response in events:
        if response.error is not None:
            raise response.error
        reply.add(read_delta(response, index))
    return reply.body()
