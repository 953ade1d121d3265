"""Tool declarations, the forced-call grammar, and turning model text into OpenAI tool_calls (whole or streamed)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from nereid.server.openai.errors import OpenAIError
from nereid.server.openai.protocol import parse_chat
from nereid.server.openai.tools import ToolParser, Tools, parse_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def feed_all(tools: Tools, pieces: list[str]) -> tuple[ToolParser, list[dict]]:
    parser = ToolParser(tools)
    deltas = [parser.feed(p) for p in pieces] + [parser.finish()]
    return parser, [d for d in deltas if d]


def test_auto_parses_hermes_blocks_split_anywhere_and_keeps_the_text_around():
    text = (
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call> ok'
    )
    for size in (1, 3, 7, len(text)):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        parser, deltas = feed_all(Tools([WEATHER]), pieces)
        assert parser.content == "Let me check. ok"
        (call,) = parser.calls
        assert call["id"].startswith("call_") and call["function"] == {
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        }
        assert "".join(d.get("content", "") for d in deltas) == "Let me check. ok"
        (entry,) = [e for d in deltas for e in d.get("tool_calls", [])]
        assert entry["index"] == 0 and entry["type"] == "function" and entry["id"] == call["id"]


def test_auto_keeps_a_broken_block_as_text():
    parser, _ = feed_all(Tools([WEATHER]), ["<tool_call>not json</tool_call>", "<tool_"])
    assert parser.calls == [] and parser.content == "<tool_call>not json</tool_call><tool_"


def test_named_streams_arguments_as_chunks():
    tools = parse_tools(
        {**CHAT, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    )
    assert tools is not None and tools.guided_decoding() == {"json": WEATHER["function"]["parameters"]}
    parser, deltas = feed_all(tools, ['{"city"', ': "Oslo"}'])
    first, second = (d["tool_calls"][0] for d in deltas)
    assert first["function"] == {"name": "get_weather", "arguments": '{"city"'} and first["id"].startswith(
        "call_"
    )
    assert second == {"index": 0, "function": {"arguments": ': "Oslo"}'}}
    assert parser.calls[0]["function"]["arguments"] == '{"city": "Oslo"}'


def test_required_schema_accepts_calls_and_the_parser_reads_them():
    tools = parse_tools({**CHAT, "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False})
    assert tools is not None
    schema = tools.guided_decoding()["json"]
    calls = [{"name": "get_weather", "parameters": {"city": "Rome"}}]
    jsonschema.validate(calls, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(calls * 2, schema)
    parser, deltas = feed_all(tools, [json.dumps(calls)[:10], json.dumps(calls)[10:]])
    assert [c["function"] for c in parser.calls] == [{"name": "get_weather", "arguments": '{"city": "Rome"}'}]
    assert parser.content == "" and len(deltas) == 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "x"}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER], "tool_choice": "required", "guided_regex": "a"}, "tool_choice"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
        ),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_bad_tools_and_formats_name_the_field(extra, param):
    with pytest.raises(OpenAIError) as info:
        parse_chat({**CHAT, **extra})
    assert info.value.status == 400 and info.value.param == param


def test_formats_become_guided_decoding():
    schema = {"type": "object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert parse_chat({**CHAT, "response_format": fmt}).sampling["guided_decoding"] == {"json": schema}
    assert parse_chat({**CHAT, "response_format": {"type": "json_object"}}).sampling["guided_decoding"] == {
        "json_object": True
    }
    assert "guided_decoding" not in parse_chat({**CHAT, "response_format": {"type": "text"}}).sampling
    assert parse_chat({**CHAT, "guided_choice": ["a", "b"]}).sampling["guided_decoding"] == {
        "choice": ["a", "b"]
    }
    call = parse_chat({**CHAT, "tools": [WEATHER], "tool_choice": "none"})
    assert call.tools is not None and call.tools.choice == "none" and "guided_decoding" not in call.sampling


def test_assistant_tool_calls_are_kept_for_the_template():
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    parsed = parse_chat({"model": "m", "messages": messages}).messages
    assert parsed is not None
    assert parsed[1].as_dict()["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert parsed[2].as_dict() == {"role": "tool", "content": "42", "tool_call_id": "call_1"}
