"""Chat prompts with tools: the template's own tool format when it has one, else a Hermes-style fallback.

A template that mentions ``tools`` gets them as transformers' ``apply_chat_template(tools=...)`` passes them
(a list of OpenAI ``{"type": "function", "function": {...}}`` objects), with assistant ``tool_calls`` and
``tool`` messages as they came. A template without tool support (SmolLM2's) gets the Hermes format
(NousResearch's Hermes 2 Pro, used by Qwen2.5 and many others) written into the messages instead: the tools
as JSON inside ``<tools></tools>`` in the system message, earlier calls as ``<tool_call>{"name": ...,
"arguments": {...}}</tool_call>`` in the assistant's text, and tool results inside ``<tool_response>`` tags.
The OpenAI front-end parses replies in that same format (:mod:`nereid.server.openai.tools`).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from nereid.backends.llm.tokenizer import Tokenizer

HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> "
    "XML tags. You may call one or more functions to assist with the user query. Don't make assumptions "
    "about what values to plug into functions. Here are the available tools: <tools>\n{tools}\n</tools>\n"
    "For each function call return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags as follows:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-dict>}}\n</tool_call>'
)


def render(tokenizer: Tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The prompt text of `messages` (+ `tools`) ending with the assistant's turn; ValueError from the template."""
    if tools and not supports_tools(tokenizer.chat_template):
        messages, tools = hermes_messages(messages, tools), None
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, **extra)


def supports_tools(template: str | None) -> bool:
    """Whether the template renders a ``tools`` variable (the check transformers' own docs suggest)."""
    return bool(template) and "tools" in template  # type: ignore[operator]


def hermes_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with the tools, calls and results written as Hermes-style text."""
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    system = HERMES_SYSTEM.format(tools=listing)
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = [_call_text(call) for call in message["tool_calls"]]
            content = "\n".join(([content] if content else []) + calls)
        elif role == "tool":
            content = f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": role, "content": content})
    if out and out[0]["role"] in ("system", "developer"):
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{system}"}
    else:
        out.insert(0, {"role": "system", "content": system})
    return out


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function", {})
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):  # else keep the text of a malformed call
            arguments = json.loads(arguments)
    body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"
