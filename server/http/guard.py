"""The HTTP side of the gate: which API group and model a request is, checked before routing.

Names follow Triton's ``--http-restricted-api`` groups. The OpenAI routes name their model in
the JSON body, so for them (and for ``generate``, when token limits may apply) the guard reads
the body first; the handler then gets the same, already read body. A refusal answers 401 (with
``WWW-Authenticate``), 403 or 429 (with ``Retry-After``), as ``{"error": "..."}`` or, under
``/v1``, in OpenAI's error shape.
"""

from __future__ import annotations

import math
from typing import Any

from nereid.server.auth import ApiGroup
from nereid.server.errors import RateLimited, ServingError, Unauthenticated
from nereid.server.gate import Gate
from nereid.server.http import codec
from nereid.server.http.errors import HTTP_STATUS
from nereid.server.ratelimit import token_charge

_MODEL_ROUTES = {
    "": ApiGroup.METADATA,
    "ready": ApiGroup.HEALTH,
    "config": ApiGroup.MODEL_CONFIG,
    "stats": ApiGroup.STATISTICS,
    "infer": ApiGroup.INFERENCE,
    "generate": ApiGroup.INFERENCE,
    "generate_stream": ApiGroup.INFERENCE,
    "trace": ApiGroup.TRACE,
}
_TOP_ROUTES = {
    "health": ApiGroup.HEALTH,
    "repository": ApiGroup.MODEL_REPOSITORY,
    "systemsharedmemory": ApiGroup.SHARED_MEMORY,
    "cudasharedmemory": ApiGroup.SHARED_MEMORY,
    "trace": ApiGroup.TRACE,
    "logging": ApiGroup.LOGGING,
}
# Body kinds: the LLM routes whose body names the model or carries a token budget.
_OPENAI, _GENERATE = "openai", "generate"


def classify(parts: list[str]) -> tuple[ApiGroup, str, str]:
    """(API group, model name or "", body kind or "") of a request path split into parts."""
    match parts:
        case ["v2"]:
            return ApiGroup.METADATA, "", ""
        case ["v2", "models", "stats"]:
            return ApiGroup.STATISTICS, "", ""
        case ["v2", "models", name, "versions", _, *rest] | ["v2", "models", name, *rest]:
            action = rest[0] if rest else ""
            body = _GENERATE if action in ("generate", "generate_stream") else ""
            return _MODEL_ROUTES.get(action, ApiGroup.INFERENCE), name, body
        case ["v2", "repository", "models", name, *_]:
            return ApiGroup.MODEL_REPOSITORY, name, ""
        case ["v2", top, *_] if top in _TOP_ROUTES:
            return _TOP_ROUTES[top], "", ""
        case ["v1", "models", *name]:
            return ApiGroup.METADATA, "/".join(name), ""
        case ["v1", "completions"] | ["v1", "chat", "completions"]:
            return ApiGroup.INFERENCE, "", _OPENAI
    return ApiGroup.INFERENCE, "", ""


def _prompt_bytes(value: Any) -> int:
    """UTF-8 size of the text in a prompt, a message list or generate's ``text_input``."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_prompt_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_prompt_bytes(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def _llm_call(body: Any, kind: str) -> tuple[str, int]:
    """(model, token charge) of an OpenAI or generate body; bad bodies are the handler's to refuse."""
    if not isinstance(body, dict):
        return "", 0
    if kind == _OPENAI:
        model = body.get("model")
        prompt = body.get("prompt", body.get("messages"))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        model = None
        prompt = body.get("text_input", body.get("prompt"))
        params = body.get("parameters")
        limit = body.get("max_tokens", params.get("max_tokens") if isinstance(params, dict) else None)
    max_tokens = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    if kind == _OPENAI and max_tokens is None and "prompt" in body:
        max_tokens = 16  # OpenAI's default for completions
    return (model if isinstance(model, str) else ""), token_charge(_prompt_bytes(prompt), max_tokens)


class HttpGuard:
    """``await guard.admit(request, scope, send)`` before routing; False means already answered."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def admit(self, request: Any, scope: dict[str, Any], send: Any) -> bool:
        group, model, body_kind = classify(request.parts)
        client = scope.get("client")
        address = client[0] if client else ""
        try:
            tokens = 0
            if body_kind and (body_kind == _OPENAI or self.gate.counts_tokens):
                # Authenticate before reading a body on behalf of an unknown client.
                self.gate.check(request.headers, address, group, model, count=False)
                body_model, tokens = _llm_call(await request.json(), body_kind)
                model = model or body_model
            self.gate.check(request.headers, address, group, model, tokens)
        except ServingError as error:
            await self._refuse(send, error, openai=request.parts[0] == "v1")
            return False
        return True

    async def _refuse(self, send: Any, error: ServingError, openai: bool) -> None:
        status = HTTP_STATUS[error.code]
        headers = [(b"content-type", b"application/json")]
        if isinstance(error, Unauthenticated):
            headers.append((b"www-authenticate", b'Bearer realm="nereid"'))
        if isinstance(error, RateLimited):
            headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after_s))).encode()))
        if openai:
            from nereid.server.openai.errors import as_openai_error

            body = as_openai_error(error).body()
        else:
            body = codec.dumps({"error": error.message})
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
