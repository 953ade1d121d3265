"""Tool calling for chat: ``tools`` and ``tool_choice`` in, ``tool_calls`` out (whole or as stream deltas).

The backend renders the tools into the prompt (the chat template's own format, or the Hermes fallback of
:mod:`nereid.backends.llm.chat`). What the model writes becomes calls here:

* ``auto``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks anywhere in the text (Hermes
  format); the text around them stays ``content``. A block that does not parse stays text.
* ``required``: the grammar forces a JSON array ``[{"name": ..., "parameters": {...}}, ...]`` of at least one
  call of a declared function (vLLM's schema); ``parallel_tool_calls: false`` makes it exactly one.
* a named function: the grammar forces the function's ``parameters`` schema; the text is its arguments,
  streamed as ``function.arguments`` chunks as it is generated.
* ``none``: tools are neither rendered nor parsed.

A choice that produced calls finishes with ``"tool_calls"``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from nereid.server.openai.errors import bad_request
from nereid.server.openai.fields import obj
from nereid.server.openai.structured import NAME_RULE, check_schema

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(slots=True)
class Tools:
    """The validated ``tools`` of a chat call and its ``tool_choice``: none | auto | required | named."""

    tools: list[dict[str, Any]]
    choice: str = "auto"
    name: str | None = None
    """The function ``tool_choice`` names (choice "named")."""
    parallel: bool = True

    def guided_decoding(self) -> dict[str, Any] | None:
        """The grammar forcing a call (required / named choice), as a guided_decoding dict; None otherwise."""
        params = {
            t["function"]["name"]: t["function"].get("parameters", _EMPTY_PARAMETERS) for t in self.tools
        }
        if self.choice == "named":
            assert self.name is not None
            return {"json": params[self.name]}
        if self.choice != "required":
            return None
        item = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"type": "string", "enum": [name]}, "parameters": schema},
                    "required": ["name", "parameters"],
                    "additionalProperties": False,
                }
                for name, schema in params.items()
            ]
        }
        array: dict[str, Any] = {"type": "array", "minItems": 1, "items": item}
        if not self.parallel:
            array["maxItems"] = 1
        return {"json": array}


def parse_tools(body: dict[str, Any]) -> Tools | None:
    """``tools`` / ``tool_choice`` / ``parallel_tool_calls`` checked as 400s naming the field; None: no tools."""
    for key in ("functions", "function_call"):
        if body.get(key) is not None:
            raise bad_request(f"'{key}' (deprecated function calling) is not supported; use 'tools'", key)
    raw, choice = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    if raw is None or raw == []:
        if choice not in (None, "none", "auto"):
            raise bad_request("'tool_choice' needs 'tools'", "tool_choice")
        return None
    if not isinstance(raw, list):
        raise bad_request("'tools' must be a list of tool objects", "tools")
    tools = [_tool(item, f"tools[{i}]") for i, item in enumerate(raw)]
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise bad_request("'tools' declares a function name twice", "tools")
    spec = Tools(tools, parallel=parallel)
    if choice is None or choice in ("none", "auto", "required"):
        spec.choice = choice or "auto"
        return spec
    fn = obj(choice, "tool_choice").get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if obj(choice, "tool_choice").get("type") != "function" or not isinstance(name, str):
        raise bad_request(
            "'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
            "tool_choice",
        )
    if name not in names:
        raise bad_request(
            f"'tool_choice' names function '{name}', which 'tools' does not declare", "tool_choice"
        )
    spec.choice, spec.name = "named", name
    return spec


def _tool(item: Any, where: str) -> dict[str, Any]:
    tool = obj(item, where)
    if tool.get("type") != "function":
        raise bad_request(f"'{where}.type' must be 'function'", f"{where}.type")
    fn = obj(tool.get("function"), f"{where}.function")
    name = fn.get("name")
    if not isinstance(name, str) or not NAME_RULE.match(name):
        raise bad_request(
            f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-'", f"{where}.function.name"
        )
    out: dict[str, Any] = {"name": name}
    if fn.get("description") is not None:
        if not isinstance(fn["description"], str):
            raise bad_request(
                f"'{where}.function.description' must be a string", f"{where}.function.description"
            )
        out["description"] = fn["description"]
    if fn.get("parameters") is not None:
        out["parameters"] = check_schema(fn["parameters"], f"{where}.function.parameters")
    return {"type": "function", "function": out}


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolParser:
    """One choice's text → content and tool calls. ``feed`` as text arrives (returns the stream delta's
    fields), ``finish`` at the end; ``content`` and ``calls`` then hold the whole message."""

    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.content = ""
        self.calls: list[dict[str, Any]] = []
        self._buf = ""
        self._in_call = False

    def feed(self, text: str) -> dict[str, Any]:
        if self.tools.choice == "named":
            return self._named(text)
        self._buf += text
        if self.tools.choice == "required":
            return {}
        content, calls = "", []
        while True:
            if not self._in_call:
                at = self._buf.find(OPEN)
                if at < 0:
                    keep = _partial_suffix(self._buf, OPEN)
                    content += self._buf[: len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep :]
                    break
                content += self._buf[:at]
                self._buf, self._in_call = self._buf[at + len(OPEN) :], True
            else:
                at = self._buf.find(CLOSE)
                if at < 0:
                    break
                block, self._buf, self._in_call = self._buf[:at], self._buf[at + len(CLOSE) :], False
                call = self._call(block)
                if call is None:
                    content += OPEN + block + CLOSE
                else:
                    calls.append(call)
        return self._delta(content, calls)

    def finish(self) -> dict[str, Any]:
        """Whatever the text still held: a trailing block, the required array, or plain content."""
        if self.tools.choice == "named":
            return {}
        buf, self._buf = self._buf, ""
        if self.tools.choice == "required":
            calls = _required_calls(buf)
            return self._delta(buf if calls is None else "", [self._record(*c) for c in calls or []])
        if self._in_call:
            call = self._call(buf)
            return self._delta("" if call else OPEN + buf, [call] if call else [])
        return self._delta(buf, [])

    def _named(self, text: str) -> dict[str, Any]:
        if not self.calls:
            assert self.tools.name is not None
            call = self._record(self.tools.name, text)
            return {"tool_calls": [{"index": 0, **call, "function": dict(call["function"])}]}
        self.calls[0]["function"]["arguments"] += text
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}

    def _call(self, block: str) -> dict[str, Any] | None:
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        return self._record(value["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))

    def _record(self, name: str, arguments: str) -> dict[str, Any]:
        call = {"id": call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}
        self.calls.append(call)
        return call

    def _delta(self, content: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        self.content += content
        delta: dict[str, Any] = {"content": content} if content else {}
        if calls:
            first = len(self.calls) - len(calls)
            delta["tool_calls"] = [
                {"index": first + i, **c, "function": dict(c["function"])} for i, c in enumerate(calls)
            ]
        return delta


def _required_calls(text: str) -> list[tuple[str, str]] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, dict) and isinstance(v.get("name"), str) for v in value
    ):
        return None
    return [(v["name"], json.dumps(v.get("parameters", {}))) for v in value]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag`` (held back while streaming)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
