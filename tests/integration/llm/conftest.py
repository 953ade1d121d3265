"""A tiny random Llama (+ a locally trained byte-level BPE tokenizer) served by the ``llm`` backend.

Every test that uses ``llm`` checks afterwards that the engines went idle with every KV block free and the
block accounting intact (read on the driver thread through ``LLMInstance.call``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Hello world, hello tokens! Stop here.",
    "Café, naïve, 東京, emoji 😀 too.",
] * 3
# Served engine settings, shared with tests that build the same engine directly.
ENGINE = dict(
    block_size=4, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512, kv_cache_bytes=1 << 20
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, tiny_llm_builder: Callable[..., None]) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llm_builder(
        path,
        CORPUS,
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,  # peaked logits: greedy results do not flip between batch shapes
        eos_token_id=0,
        bos_token_id=None,
    )
    return path


def make_config(model_path: str, explicit_io: bool = True, **parameters: Any) -> str:
    """A config.pbtxt for the llm backend (without explicit I/O, auto-complete fills it in)."""
    params = {**ENGINE, **parameters, "model": model_path}
    lines = [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()]
    text = 'backend: "llm"\nmax_batch_size: 0\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n'
    if explicit_io:
        text += """
model_transaction_policy { decoupled: true }
input [
  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] optional: true },
  { name: "messages" data_type: TYPE_STRING dims: [ 1 ] optional: true },
  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] optional: true },
  { name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true },
  { name: "sampling_parameters" data_type: TYPE_STRING dims: [ 1 ] optional: true },
  { name: "exclude_input_in_output" data_type: TYPE_BOOL dims: [ 1 ] optional: true }
]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] } ]
"""
    return text + "\n".join(lines) + "\n"


class LLMClient:
    """HTTP generate helpers plus engine inspection for one running server."""

    def __init__(self, running: Any) -> None:
        self.running = running
        self.http = httpx.Client(base_url=f"http://{running.http_url}", timeout=60)

    def post(self, model: str, body: dict[str, Any], stream: bool = False) -> httpx.Response:
        return self.http.post(f"/v2/models/{model}/{'generate_stream' if stream else 'generate'}", json=body)

    def generate(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.post(model, body)
        assert response.status_code == 200, response.text
        return response.json()

    def events(self, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        response = self.post(model, body, stream=True)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/event-stream"
        chunks = [c for c in response.text.split("\n\n") if c]
        assert all(c.startswith("data: ") for c in chunks), chunks
        return [json.loads(c[len("data: ") :]) for c in chunks]

    def instance(self, model: str) -> Any:
        return self.running.core.repository.lookup(model).instances[0]

    def engine_call(self, model: str, fn: Any) -> Any:
        return self.instance(model).call(fn)

    def wait_idle(self, model: str, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until the engine has nothing left; check that every block is free and accounting is intact."""

        def probe(engine: Any) -> dict[str, Any]:
            engine.block_manager.check_no_leaks(engine.scheduler.running)
            stats = engine.stats()
            return {"busy": engine.has_unfinished(), "stats": stats}

        deadline = time.monotonic() + timeout
        while True:
            state = self.engine_call(model, probe)
            stats = state["stats"]
            if not state["busy"] and stats.num_free_kv_blocks == stats.num_kv_blocks:
                return state
            assert time.monotonic() < deadline, f"engine of '{model}' did not go idle: {stats}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def llm_server(module_repo: Any, start_module_server: Any, tiny_llama: Path) -> Any:
    module_repo.config("tiny", make_config(str(tiny_llama)))
    module_repo.config(
        "tiny_auto", make_config(str(tiny_llama), explicit_io=False, enable_prefix_caching="false")
    )
    return start_module_server(module_repo.root)


@pytest.fixture
def llm(llm_server: Any) -> Iterator[LLMClient]:
    client = LLMClient(llm_server)
    yield client
    client.http.close()
    for model in ("tiny", "tiny_auto"):
        client.wait_idle(model)


def greedy(max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True, **extra}


@pytest.fixture
def greedy_params() -> Any:
    return greedy


@pytest.fixture
def llm_config() -> Any:
    """``llm_config(model_path, explicit_io=True, **parameters)`` -> config.pbtxt text."""
    return make_config


@pytest.fixture
def engine_settings() -> dict[str, Any]:
    """The EngineConfig values the served models use (besides the model path)."""
    return dict(ENGINE)
