"""``echo`` with ``logprobs`` on /v1/completions: the prompt's tokens come first with their logprobs from the
prefill (the first one null, as OpenAI and vLLM), equal to transformers' within float tolerance."""

from __future__ import annotations

import openai
import pytest
import torch

pytest.importorskip("nereid.backends.llm.backend")

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."] * 3
PROMPT = "The quick brown fox jumps"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_llm_builder):
    path = tmp_path_factory.mktemp("tiny-echo")
    kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    tiny_llm_builder(path, CORPUS, vocab_size=300, num_key_value_heads=2, max_position_embeddings=128, **kw)
    return path


@pytest.fixture(scope="module")
def client(module_repo, start_module_server, weights):
    module_repo.config(
        "tiny",
        f"""backend: "llm"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "model" value: {{ string_value: "{weights}" }} }}
parameters {{ key: "max_model_len" value: {{ string_value: "64" }} }}
parameters {{ key: "block_size" value: {{ string_value: "4" }} }}
""",
    )
    server = start_module_server(module_repo.root)
    return openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def expected(weights):
    """(prompt ids, the prompt's logprobs [tokens, vocab]) from transformers."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    ids = Tokenizer.from_file(str(weights / "tokenizer.json")).encode(PROMPT).ids
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).eval()
    with torch.no_grad():
        return ids, model(torch.tensor([ids])).logits[0].log_softmax(-1)


@pytest.mark.parametrize("stream", [False, True])
def test_echo_logprobs_match_transformers(client, expected, stream):
    ids, logprobs = expected
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=3, echo=True, logprobs=2, **GREEDY)
    if stream:
        chunks = list(client.completions.create(stream=True, **kwargs))
        lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        text = ""
        for chunk in chunks:
            choice = chunk.choices[0]
            text += choice.text
            if choice.logprobs is not None:
                for key in lp:
                    lp[key] += getattr(choice.logprobs, key)
    else:
        choice = client.completions.create(**kwargs).choices[0]
        text = choice.text
        lp = {
            k: getattr(choice.logprobs, k)
            for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")
        }
    n = len(ids)
    assert text.startswith(PROMPT)
    assert len(lp["tokens"]) == n + 3 and "".join(lp["tokens"][:n]) == PROMPT
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][:n] == [len("".join(lp["tokens"][:i])) for i in range(n)]
    for pos in range(1, n):
        assert lp["token_logprobs"][pos] == pytest.approx(float(logprobs[pos - 1, ids[pos]]), abs=1e-4)
        top = logprobs[pos - 1].topk(2)
        assert len(lp["top_logprobs"][pos]) in (2, 3)  # the top 2, plus the prompt token when not among them
        assert max(lp["top_logprobs"][pos].values()) == pytest.approx(float(top.values[0]), abs=1e-4)
    # The generated part is the same as without echo.
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, logprobs=2, **GREEDY)
    assert text == PROMPT + plain.choices[0].text
    assert lp["token_logprobs"][n:] == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-5)


def test_echo_without_logprobs_and_usage(client):
    c = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2, echo=True, logprobs=0, **GREEDY)
    lp = c.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(isinstance(v, float) for v in lp.token_logprobs[1:])
    assert all(len(t) == 1 for t in lp.top_logprobs[1:])  # logprobs=0: the token itself only
    assert c.usage.completion_tokens == 2
