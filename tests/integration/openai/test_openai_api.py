"""The OpenAI API through the official client: models, completions, chat, streaming, usage, logprobs."""

from __future__ import annotations

import pytest


def test_list_and_retrieve_models(client):
    models = client.models.list().data
    # the ONNX model is not an LLM; each version is listed as name:version too
    assert [m.id for m in models] == ["fake", "fake:1", "slow", "slow:1"]
    for m in models:
        assert (m.object, m.owned_by) == ("model", "nereid")
        assert isinstance(m.created, int)
    assert client.models.retrieve("fake").id == "fake"
    assert client.models.retrieve("fake:1").id == "fake:1"


def test_completion(client):
    c = client.completions.create(model="fake", prompt="the quick brown fox", max_tokens=10)
    assert c.id.startswith("cmpl-")
    assert (c.object, c.model) == ("text_completion", "fake")
    assert isinstance(c.created, int)
    [choice] = c.choices
    assert (choice.index, choice.text, choice.finish_reason) == (0, "the quick brown fox", "stop")
    assert choice.logprobs is None
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (4, 4, 8)


def test_completion_finish_reason_length(client):
    c = client.completions.create(model="fake", prompt="the quick brown fox", max_tokens=2)
    assert (c.choices[0].text, c.choices[0].finish_reason) == ("the quick", "length")
    assert c.usage.completion_tokens == 2
    words = " ".join(f"w{i}" for i in range(20))
    c = client.completions.create(model="fake", prompt=words)  # OpenAI's default max_tokens is 16
    assert c.usage.completion_tokens == 16
    assert c.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stop", ["brown", ["nothing", "fox"]])
def test_completion_stop_strings(client, stop):
    c = client.completions.create(model="fake", prompt="the quick brown fox jumps", max_tokens=10, stop=stop)
    expected = "the quick " if stop == "brown" else "the quick brown "
    assert (c.choices[0].text, c.choices[0].finish_reason) == (expected, "stop")


@pytest.mark.parametrize(
    "prompt, text",
    [(["one two"], "one two"), ([5, 6, 7], "t5 t6 t7"), ([[1, 2]], "t1 t2")],
)
def test_prompt_forms(client, prompt, text):
    c = client.completions.create(model="fake", prompt=prompt, max_tokens=5)
    assert c.choices[0].text == text


def test_completion_stream(client):
    chunks = list(client.completions.create(model="fake", prompt="a b c", max_tokens=5, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == "a b c"
    assert len({ch.id for ch in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    assert all(ch.object == "text_completion" and ch.usage is None for ch in chunks)
    assert [ch.choices[0].finish_reason for ch in chunks] == [None, None, "stop"]


def test_stream_include_usage(client):
    stream = client.completions.create(
        model="fake", prompt="a b c", max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(ch.usage is None for ch in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 2, 5)


def test_chat(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    r = client.chat.completions.create(model="fake", messages=messages)
    assert r.id.startswith("chatcmpl-")
    assert (r.object, r.model) == ("chat.completion", "fake")
    [choice] = r.choices
    assert (choice.message.role, choice.message.content) == ("assistant", "hello there")
    assert choice.finish_reason == "stop"
    # the fake renders "system: be brief user: hello there assistant:"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (7, 2, 9)


def test_chat_has_no_default_token_limit(client, events):
    words = " ".join(f"w{i}" for i in range(20))
    r = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": words}])
    assert r.usage.completion_tokens == 20
    assert events.sampling[r.id] == {"max_tokens": None}


def test_chat_roles_and_content_parts(client):
    messages = [
        {"role": "user", "content": "what is the weather"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "say"}, {"type": "text", "text": "it twice"}]},
    ]  # fmt: skip
    r = client.chat.completions.create(model="fake", messages=messages, max_completion_tokens=2)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("say it", "length")


def test_chat_stream(client):
    messages = [{"role": "user", "content": "hello there"}]
    chunks = list(client.chat.completions.create(model="fake", messages=messages, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "hello there"
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])


def test_completion_logprobs(client):
    c = client.completions.create(model="fake", prompt="a b c", max_tokens=5, logprobs=2)
    lp = c.choices[0].logprobs
    assert lp.tokens == ["a", " b", " c"]
    assert lp.token_logprobs == [-0.25, -0.5, -0.75]
    assert lp.text_offset == [0, 1, 3]
    assert lp.top_logprobs[1] == {" b": -0.5, "alt1": -1.5}
    chunks = list(client.completions.create(model="fake", prompt="a b", logprobs=0, stream=True))
    assert [ch.choices[0].logprobs.tokens for ch in chunks] == [["a"], [" b"]]
    assert [ch.choices[0].logprobs.text_offset for ch in chunks] == [[0], [1]]
    assert chunks[1].choices[0].logprobs.top_logprobs == [{" b": -0.5}]  # the sampled token only


def test_chat_logprobs(client):
    messages = [{"role": "user", "content": "hi you"}]
    r = client.chat.completions.create(model="fake", messages=messages, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert [e.token for e in content] == ["hi", " you"]
    assert content[1].bytes == list(b" you")
    assert [t.token for t in content[1].top_logprobs] == [" you", "alt1"]
    r = client.chat.completions.create(model="fake", messages=messages, logprobs=True)
    assert [e.top_logprobs for e in r.choices[0].logprobs.content] == [[], []]
    chunks = list(client.chat.completions.create(model="fake", messages=messages, logprobs=True, stream=True))
    assert [e.token for ch in chunks if ch.choices[0].logprobs for e in ch.choices[0].logprobs.content] == [
        "hi",
        " you",
    ]


def test_sampling_fields_reach_the_backend(client, events):
    extra = {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "min_tokens": 1,
        "ignore_eos": True,
        "stop_token_ids": [3],
        "priority": 1,
    }
    c = client.completions.create(
        model="fake",
        prompt="a",
        max_tokens=3,
        temperature=0.5,
        top_p=0.9,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        stop=["zz"],
        user="someone",
        extra_body=extra,
    )
    assert events.sampling[c.id] == {
        "temperature": 0.5,
        "top_p": 0.9,
        "min_p": 0.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repetition_penalty": 1.1,
        "top_k": 5,
        "seed": 7,
        "max_tokens": 3,
        "min_tokens": 1,
        "stop": ["zz"],
        "stop_token_ids": [3],
        "ignore_eos": True,
    }
    assert events.priority[c.id] == 1
