"""Tools and structured-output fields through the HTTP stack to the fake LLM (which echoes the last message):
what the backend receives, and the Hermes ``<tool_call>`` blocks of an ``auto`` reply as ``tool_calls``."""

from __future__ import annotations

import json

import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
BLOCK = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'
SAYS = [{"role": "user", "content": f"Checking. {BLOCK} done"}]


def test_auto_reply_becomes_tool_calls(client, events):
    r = client.chat.completions.create(model="fake", messages=SAYS, tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content.split() == ["Checking.", "done"]
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert events.sampling[r.id]["tools"] == [WEATHER] and "guided_decoding" not in events.sampling[r.id]


def test_auto_reply_streams_tool_call_deltas(client):
    chunks = list(client.chat.completions.create(model="fake", messages=SAYS, tools=[WEATHER], stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert content.split() == ["Checking.", "done"] and "<tool" not in content
    (delta,) = deltas
    assert (delta.index, delta.type, delta.function.name) == (0, "function", "get_weather")
    assert json.loads(delta.function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_without_tools_or_with_none_the_block_stays_text(client, events):
    for kw in ({}, {"tools": [WEATHER], "tool_choice": "none"}):
        r = client.chat.completions.create(model="fake", messages=SAYS, **kw)
        assert BLOCK in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
        assert "tools" not in events.sampling[r.id]


@pytest.mark.parametrize(
    ("kw", "guided"),
    [
        ({"tool_choice": "required"}, "json"),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "json"),
        ({"response_format": {"type": "json_object"}, "tool_choice": "auto"}, "json_object"),
        ({"extra_body": {"guided_regex": "[a-z]+"}}, "regex"),
    ],
)
def test_forced_calls_and_formats_reach_the_backend_as_guided_decoding(client, events, kw, guided):
    r = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER], **kw
    )
    assert list(events.sampling[r.id]["guided_decoding"]) == [guided]
