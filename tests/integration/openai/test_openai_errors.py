"""Bad requests get OpenAI-shaped 4xx errors, disconnects cancel requests, and the server keeps serving."""

from __future__ import annotations

import http.client
import json
import socket
import time

import openai
import pytest

LONG_PROMPT = " ".join(f"w{i}" for i in range(65))  # the fake's limit is 64 words


@pytest.fixture(autouse=True)
def still_serving(client):
    yield
    c = client.completions.create(model="fake", prompt="ok", max_tokens=1)
    assert c.choices[0].text == "ok"


def raw(server, method: str, path: str, body: bytes = b"") -> tuple[int, str, bytes]:
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body, headers={"content-type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, response.getheader("content-type", ""), payload


def assert_openai_error(status: int, payload: bytes, expected_status: int, param: str | None = None) -> dict:
    assert status == expected_status, payload
    error = json.loads(payload)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 9}, "n"),  # over the default cap of 8
        ({"logprobs": 21}, "logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"stop": 5}, "stop"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"5": "big"}}, "logit_bias"),
        ({"best_of": 9}, "best_of"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"best_of": 2, "stream": True}, "best_of"),
        ({"user": 5}, "user"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"extra_body": {"top_k": -2}}, "top_k"),
        ({"extra_body": {"priority": -1}}, "priority"),
        ({"extra_body": {"stop_token_ids": [-1]}}, "stop_token_ids"),
    ],
)
def test_completion_bad_values(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake", prompt="a b", **kwargs)
    assert (info.value.param, info.value.type) == (param, "invalid_request_error")


@pytest.mark.parametrize("prompt", ["", [], ["a", ""], [1, "a"], [True], [[1], []], [["a"]], 5])
def test_completion_bad_prompts(client, prompt):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake", prompt=prompt)
    assert info.value.param == "prompt"


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0]",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
    ],
)
def test_chat_bad_values(client, kwargs, param):
    kwargs.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake", **kwargs)
    assert info.value.param == param


@pytest.mark.parametrize("stream", [False, True])
def test_backend_invalid_arg_is_400(client, stream):
    """Errors the backend reports (here: prompt too long) arrive as 400s, also before a stream starts."""
    with pytest.raises(openai.BadRequestError, match="more than the limit"):
        client.completions.create(model="fake", prompt=LONG_PROMPT, stream=stream)
    with pytest.raises(openai.BadRequestError, match="more than the limit"):
        client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": LONG_PROMPT}], stream=stream
        )


def test_error_after_the_first_chunk_is_an_sse_event(client, server):
    chunks = []
    with pytest.raises(openai.APIError, match="the fake engine failed"):
        for chunk in client.completions.create(model="fake", prompt="a FAIL b", stream=True):
            chunks.append(chunk.choices[0].text)
    assert chunks == ["a"]
    status, content_type, payload = raw(
        server, "POST", "/v1/completions", b'{"model": "fake", "prompt": "a FAIL", "stream": true}'
    )
    assert (status, content_type) == (200, "text/event-stream")
    events = payload.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert json.loads(events[-3].removeprefix("data: "))["error"]["message"] == "the fake engine failed"
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="fake", prompt="a FAIL b")


def test_unknown_model_is_404(client, server):
    for model in ("nope", "not_llm"):
        with pytest.raises(openai.NotFoundError) as info:
            client.completions.create(model=model, prompt="a")
        assert (info.value.type, info.value.code, info.value.param) == (
            "not_found_error",
            "model_not_found",
            "model",
        )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "a"}], stream=True
            )
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(model)


@pytest.mark.parametrize(
    "body, param",
    [
        (b"{not json", None),
        (b'{"model": "fake", "prompt": "\xff\xfe"}', None),  # invalid UTF-8
        (b"[1, 2]", None),
        (b"", "model"),
        (b'{"prompt": "a"}', "model"),
        (b'{"model": 5, "prompt": "a"}', "model"),
        (b"[" * 200 + b"]" * 200, None),
    ],
)
def test_malformed_bodies(server, body, param):
    status, content_type, payload = raw(server, "POST", "/v1/completions", body)
    assert content_type == "application/json"
    assert assert_openai_error(status, payload, 400, param)["type"] == "invalid_request_error"


def test_chat_needs_messages(server):
    status, _, payload = raw(server, "POST", "/v1/chat/completions", b'{"model": "fake"}')
    assert_openai_error(status, payload, 400, "messages")


def test_routes_and_methods(server):
    status, _, payload = raw(server, "GET", "/v1/completions")
    assert_openai_error(status, payload, 405)
    status, _, payload = raw(server, "GET", "/v1/embeddings")
    assert_openai_error(status, payload, 405)
    status, _, payload = raw(server, "POST", "/v1/audio/speech")
    assert_openai_error(status, payload, 404)
    status, _, payload = raw(
        server, "POST", "/v1/completions", b'{"model": "fake", "prompt": "' + b"a" * 2**20 + b'"}'
    )
    assert_openai_error(status, payload, 413)


def _wait_cancelled(events, before: set[str], timeout: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = {k: v for k, v in events.cancelled.items() if k not in before}
        if new:
            return new
        time.sleep(0.05)
    raise AssertionError("the backend never saw the request cancelled")


def test_stream_disconnect_cancels_the_request(client, events):
    words = " ".join(f"w{i}" for i in range(40))  # 4 s at 100 ms a word
    before = set(events.cancelled)
    stream = client.completions.create(model="slow", prompt=words, max_tokens=40, stream=True)
    first = next(iter(stream))
    stream.close()
    cancelled = _wait_cancelled(events, before)
    assert list(cancelled) == [first.id]
    assert cancelled[first.id] < 40


def test_non_stream_disconnect_cancels_the_request(server, events):
    words = " ".join(f"w{i}" for i in range(40))
    body = json.dumps({"model": "slow", "prompt": words, "max_tokens": 40}).encode()
    host, port = server.http_url.split(":")
    before = set(events.cancelled)
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        time.sleep(0.3)
    [(request_id, sent)] = _wait_cancelled(events, before).items()
    assert request_id.startswith("cmpl-") and sent < 40
