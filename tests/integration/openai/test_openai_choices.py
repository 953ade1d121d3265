"""Calls that fan out (``n``, ``best_of``, batched prompts), ``echo``, ``logit_bias`` and model versions,
against the fake LLM backend (see conftest)."""

from __future__ import annotations

import openai
import pytest


def test_n_choices(client):
    c = client.completions.create(model="fake", prompt="a b", n=3)
    assert [(ch.index, ch.text, ch.finish_reason) for ch in c.choices] == [
        (i, "a b", "stop") for i in range(3)
    ]
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (2, 6)  # the prompt counts once
    r = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], n=2)
    assert [(ch.index, ch.message.content) for ch in r.choices] == [(0, "hi"), (1, "hi")]


def test_batched_prompts(client):
    c = client.completions.create(model="fake", prompt=["a b", "c d e"], n=2)
    assert [(ch.index, ch.text) for ch in c.choices] == [(0, "a b"), (1, "a b"), (2, "c d e"), (3, "c d e")]
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (5, 10)
    c = client.completions.create(model="fake", prompt=[[1, 2], [3]])
    assert [ch.text for ch in c.choices] == ["t1 t2", "t3"]


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_choices(client, chat):
    if chat:
        messages = [{"role": "user", "content": "x y z"}]
        chunks = list(client.chat.completions.create(model="fake", messages=messages, n=2, stream=True))
    else:
        chunks = list(client.completions.create(model="fake", prompt=["x y z", "u"], stream=True))
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        (choice,) = chunk.choices
        texts[choice.index] = texts.get(choice.index, "") + (
            (choice.delta.content or "") if chat else choice.text
        )
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert texts == ({0: "x y z", 1: "x y z"} if chat else {0: "x y z", 1: "u"})
    assert finish == {0: "stop", 1: "stop"}


def test_best_of_keeps_n_and_hides_logprobs(client, events):
    c = client.completions.create(model="fake", prompt="a b", best_of=3, seed=5)
    assert [(ch.index, ch.text, ch.logprobs) for ch in c.choices] == [(0, "a b", None)]
    assert c.usage.completion_tokens == 6  # every candidate ran
    seeds = [events.sampling[f"{c.id}-{i}"]["seed"] for i in range(3)]
    assert seeds == [5, 6, 7]  # candidate i draws with seed + i, as vLLM's n > 1
    assert all(events.sampling[f"{c.id}-{i}"]["logprobs"] == 0 for i in range(3))  # to rank them


def test_echo(client):
    c = client.completions.create(model="fake", prompt="a b", echo=True)
    assert c.choices[0].text == "a ba b"
    chunks = list(client.completions.create(model="fake", prompt="a b", echo=True, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == "a ba b"
    with pytest.raises(openai.BadRequestError) as info:  # the fake model cannot detokenize
        client.completions.create(model="fake", prompt=[1, 2], echo=True)
    assert info.value.param == "echo"


def test_logit_bias_and_user_reach_the_backend(client, events):
    c = client.completions.create(model="fake", prompt="a", logit_bias={"5": 10, "7": -100}, user="u1")
    assert events.sampling[c.id]["logit_bias"] == {5: 10.0, 7: -100.0}


def test_bad_prompt_in_a_batch_fails_the_call_and_the_server_keeps_serving(client):
    long = " ".join(["w"] * 65)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="fake", prompt=["a", long], stream=stream)
    assert client.completions.create(model="fake", prompt="still here").choices[0].text == "still here"


def test_model_versions_are_routable(client):
    c = client.completions.create(model="fake:1", prompt="v one")
    assert (c.model, c.choices[0].text) == ("fake:1", "v one")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="fake:7", prompt="a")
