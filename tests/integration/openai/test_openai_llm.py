"""The main OpenAI flows against the real ``llm`` backend and a tiny random Llama (skipped without it)."""

from __future__ import annotations

import openai
import pytest

pytest.importorskip("nereid.backends.llm.backend")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Hello world, hello tokens! Stop here.",
    "def f(x): return x + 1",
] * 3
MAX_MODEL_LEN = 128
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_llm_builder):
    weights = tmp_path_factory.mktemp("tiny-llama")
    tiny_llm_builder(
        weights,
        CORPUS,
        vocab_size=400,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,
    )
    return weights


@pytest.fixture(scope="module")
def tokenizer(weights):
    """The served model's tokenizer, read from the same files."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(weights / "tokenizer.json"))


@pytest.fixture(scope="module")
def llm_client(module_repo, start_module_server, weights):
    module_repo.config(
        "tiny",
        f"""
backend: "llm"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "model" value: {{ string_value: "{weights}" }} }}
parameters {{ key: "max_model_len" value: {{ string_value: "{MAX_MODEL_LEN}" }} }}
parameters {{ key: "block_size" value: {{ string_value: "16" }} }}
""",
    )
    # A second LLM with its own engine and a smaller KV budget (several LLMs in one server).
    module_repo.config(
        "tiny_b",
        f"""
backend: "llm"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "model" value: {{ string_value: "{weights}" }} }}
parameters {{ key: "max_model_len" value: {{ string_value: "64" }} }}
parameters {{ key: "kv_cache_bytes" value: {{ string_value: "256KiB" }} }}
parameters {{ key: "max_n" value: {{ string_value: "2" }} }}
""",
    )
    server = start_module_server(module_repo.root)
    return openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="none", max_retries=0, timeout=60)


def test_models(llm_client):
    assert [m.id for m in llm_client.models.list().data] == ["tiny", "tiny:1", "tiny_b", "tiny_b:1"]


def test_completion_stream_matches_non_stream(llm_client):
    c = llm_client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=8, **GREEDY)
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 8 and c.usage.prompt_tokens > 0
    assert c.usage.total_tokens == c.usage.prompt_tokens + 8
    chunks = list(
        llm_client.completions.create(
            model="tiny", prompt="The quick brown fox", max_tokens=8, stream=True, **GREEDY
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks) == c.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_token_id_prompt(llm_client):
    c = llm_client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=3, **GREEDY)
    assert c.usage.prompt_tokens == 3 and c.usage.completion_tokens == 3


def test_stop_string(llm_client):
    full = llm_client.completions.create(model="tiny", prompt="Paris is", max_tokens=12, **GREEDY)
    text = full.choices[0].text
    stop = text[len(text) // 2 :][:2]
    if not stop.strip():
        pytest.skip("the random model produced no usable stop string")
    c = llm_client.completions.create(model="tiny", prompt="Paris is", max_tokens=12, stop=stop, **GREEDY)
    assert c.choices[0].finish_reason == "stop"
    assert c.choices[0].text == text[: text.find(stop)]


def test_chat_and_stream(llm_client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}]
    r = llm_client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=6, **GREEDY)
    assert r.choices[0].message.role == "assistant"
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("length", 6)
    stream = llm_client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_completion_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_logprobs(llm_client):
    c = llm_client.completions.create(model="tiny", prompt="Hello", max_tokens=4, logprobs=2, **GREEDY)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)
    messages = [{"role": "user", "content": "Hello"}]
    r = llm_client.chat.completions.create(
        model="tiny", messages=messages, max_completion_tokens=3, logprobs=True, top_logprobs=2, **GREEDY
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 3 and all(len(e.top_logprobs) == 2 for e in content)


def test_errors(llm_client):
    with pytest.raises(openai.BadRequestError):
        llm_client.completions.create(model="tiny", prompt="fox " * (2 * MAX_MODEL_LEN), max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        llm_client.completions.create(model="tiny", prompt="a", n=9)  # over the default cap of 8


def test_disconnect_then_keep_serving(llm_client):
    stream = llm_client.completions.create(
        model="tiny", prompt="Hello", max_tokens=100, stream=True, **GREEDY
    )
    next(iter(stream))
    stream.close()
    c = llm_client.completions.create(model="tiny", prompt="Hello", max_tokens=2, **GREEDY)
    assert c.usage.completion_tokens == 2


def test_chat_default_runs_to_the_context_limit(llm_client):
    messages = [{"role": "user", "content": "Hello"}]
    r = llm_client.chat.completions.create(model="tiny", messages=messages, **GREEDY)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == MAX_MODEL_LEN


def test_two_llms_each_with_its_own_engine(llm_client):
    a = llm_client.completions.create(model="tiny", prompt="Hello", max_tokens=4, **GREEDY)
    b = llm_client.completions.create(model="tiny_b:1", prompt="Hello", max_tokens=4, **GREEDY)
    assert a.choices[0].text == b.choices[0].text  # same weights, separate engines
    with pytest.raises(openai.BadRequestError) as info:  # tiny_b caps n at 2 (its max_n parameter)
        llm_client.completions.create(model="tiny_b", prompt="Hello", n=3)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError):  # its own, shorter context
        llm_client.completions.create(model="tiny_b", prompt="fox " * 70, max_tokens=4)


def test_n_with_a_seed_is_reproducible(llm_client):
    kwargs = dict(model="tiny", prompt="The quick", max_tokens=8, n=3, temperature=1.0, seed=11)
    first = [ch.text for ch in llm_client.completions.create(**kwargs).choices]
    assert [ch.text for ch in llm_client.completions.create(**kwargs).choices] == first
    assert len(set(first)) > 1  # seed + index per choice: the choices differ
    g = llm_client.completions.create(model="tiny", prompt=["Hello", "Paris is"], max_tokens=3, **GREEDY)
    one = llm_client.completions.create(model="tiny", prompt="Paris is", max_tokens=3, **GREEDY)
    assert g.choices[1].text == one.choices[0].text


def test_logit_bias_and_stop_token_ids(llm_client, tokenizer):
    forced = 42
    c = llm_client.completions.create(
        model="tiny", prompt="Hello", max_tokens=4, logit_bias={str(forced): 100}, logprobs=0, **GREEDY
    )
    assert c.choices[0].logprobs.tokens == [tokenizer.decode([forced])] * 4
    banned = llm_client.completions.create(model="tiny", prompt="Hello", max_tokens=1, logprobs=1, **GREEDY)
    top = banned.choices[0].logprobs.tokens[0]
    ids = [i for i in range(tokenizer.get_vocab_size()) if tokenizer.decode([i]) == top]
    again = llm_client.completions.create(
        model="tiny",
        prompt="Hello",
        max_tokens=1,
        logprobs=1,
        logit_bias={str(i): -100 for i in ids},
        **GREEDY,
    )
    assert again.choices[0].logprobs.tokens[0] != top
    stop = llm_client.completions.create(
        model="tiny", prompt="Hello", max_tokens=8, extra_body={"stop_token_ids": [forced]},
        logit_bias={str(forced): 100}, temperature=0,
    )  # fmt: skip
    assert (stop.choices[0].finish_reason, stop.usage.completion_tokens) == ("stop", 1)
    for bias in ({"100000": 1}, {str(forced): 101}):
        with pytest.raises(openai.BadRequestError) as info:
            llm_client.completions.create(model="tiny", prompt="Hello", max_tokens=2, logit_bias=bias)
        assert "100000" in info.value.message or info.value.param == "logit_bias"
    assert (
        llm_client.completions.create(model="tiny", prompt="Hello", max_tokens=1).usage.completion_tokens == 1
    )


def test_logprob_bytes_of_a_split_character(llm_client, tokenizer):
    byte_token = tokenizer.token_to_id("æ")  # GPT-2's stand-in for the byte 0xE6
    messages = [{"role": "user", "content": "Hello"}]
    r = llm_client.chat.completions.create(
        model="tiny", messages=messages, max_completion_tokens=1, logprobs=True,
        logit_bias={str(byte_token): 100}, **GREEDY,
    )  # fmt: skip
    (entry,) = r.choices[0].logprobs.content
    assert entry.token == "\ufffd" and entry.bytes == [0xE6]


def test_echo_and_versions(llm_client):
    plain = llm_client.completions.create(model="tiny:1", prompt="Hello", max_tokens=3, **GREEDY)
    echoed = llm_client.completions.create(model="tiny", prompt="Hello", max_tokens=3, echo=True, **GREEDY)
    assert echoed.choices[0].text == "Hello" + plain.choices[0].text
    ids = llm_client.completions.create(model="tiny", prompt=[5, 6], max_tokens=2, echo=True, **GREEDY)
    assert len(ids.choices[0].text) > 0


def test_tokenize_and_detokenize(llm_client, tokenizer):
    import httpx

    root = str(llm_client.base_url).removesuffix("/").removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=30) as http:
        r = http.post("/tokenize", json={"model": "tiny", "prompt": "Hello world", "return_token_strs": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tokens"] == tokenizer.encode("Hello world").ids
        assert body["count"] == len(body["tokens"]) and body["max_model_len"] == MAX_MODEL_LEN
        assert body["token_strs"] == [tokenizer.id_to_token(t) for t in body["tokens"]]
        chat = http.post(
            "/tokenize", json={"model": "tiny:1", "messages": [{"role": "user", "content": "Hi"}]}
        )
        assert tokenizer.decode(chat.json()["tokens"], skip_special_tokens=False).startswith(
            "<|im_start|>user"
        )
        assert chat.json()["token_strs"] is None
        d = http.post("/detokenize", json={"model": "tiny", "tokens": body["tokens"]})
        assert d.json() == {"prompt": "Hello world"}
        bad = http.post("/detokenize", json={"model": "tiny", "tokens": [10**6]})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        assert http.post("/tokenize", json={"model": "nope", "prompt": "a"}).status_code == 404
