"""OpenAI API fixtures: a deterministic fake LLM backend ("llm_fake") and a server serving it.

``llm_fake`` implements the LLM backend contract in its typed form (see :mod:`nereid.server.textgen`;
it is listed in ``LLM_BACKENDS``) without a model: it "generates" the prompt's words back, one word per response (for chat: the last message's
words; for token ids: ``t<id>``). It honours ``max_tokens`` (finish_reason "length") and ``stop``
strings, reports token counts (a token is a whitespace-separated word), returns made-up logprobs,
answers INVALID_ARG for prompts over 64 words, fails mid-stream at the word
``FAIL``, sleeps the config parameter ``delay_ms`` per word, and stops once cancelled, recording
what it saw in :data:`EVENTS`.
"""

from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openai
import pytest

from nereid.backends import registry
from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.server.errors import InternalError, InvalidArgument
from nereid.server.openai.bridge import LLM_BACKENDS
from nereid.server.textgen import MESSAGES, ChatMessage, TokenLogprob, TopLogprob
from nereid.server.types import InferRequest, InferResponse, Tensor

MAX_PROMPT_WORDS = 64


@dataclass
class Events:
    """Per request id: the sampling parameters and priority the backend got, and cancellations."""

    sampling: dict[str, dict[str, Any]] = field(default_factory=dict)
    priority: dict[str, int] = field(default_factory=dict)
    cancelled: dict[str, int] = field(default_factory=dict)  # id -> words sent before noticing
    lock: threading.Lock = field(default_factory=threading.Lock)


EVENTS = Events()


def _text(request: InferRequest, name: str) -> str | None:
    tensor = request.input(name)
    return None if tensor is None else tensor.data.reshape(-1)[0].decode()


def _prompt(request: InferRequest) -> tuple[list[str], list[str]]:
    """(prompt tokens, reply words)."""
    messages: list[ChatMessage] | None = request.parameters.get(MESSAGES)
    if messages is not None:
        rendered = " ".join(f"{m.role}: {m.content}" for m in messages) + " assistant:"
        return rendered.split(), messages[-1].content.split()
    ids = request.input("input_ids")
    if ids is not None:
        words = [f"t{int(i)}" for i in ids.data.reshape(-1)]
        return words, words
    words = (_text(request, "text_input") or "").split()
    return words, words


class FakeLLMInstance(ModelInstance):
    def execute(self, requests: list[InferRequest]) -> None:
        delay = float(self.model.context.parameter("delay_ms", "0") or 0) / 1000
        for request in requests:
            self._generate(request, delay)

    def _generate(self, request: InferRequest, delay: float) -> None:
        sender = request.sender
        assert sender is not None
        sampling = {k: v for k, v in request.parameters.items() if k not in (MESSAGES, "priority")}
        with EVENTS.lock:
            EVENTS.sampling[request.id] = sampling
            EVENTS.priority[request.id] = request.priority
        prompt, words = _prompt(request)
        if len(prompt) > MAX_PROMPT_WORDS:
            message = f"the prompt has {len(prompt)} tokens, more than the limit of {MAX_PROMPT_WORDS}"
            sender.send(InferResponse(error=InvalidArgument(message)), final=True)
            return
        limit, stops, top = sampling.get("max_tokens"), sampling.get("stop") or [], sampling.get("logprobs")
        text = ""
        if not words:
            sender.send(self._response("", [], len(prompt), 0, "stop", top), final=True)
            return
        for count, word in enumerate(words, start=1):
            if sender.cancelled:
                with EVENTS.lock:
                    EVENTS.cancelled[request.id] = count - 1
                sender.send(None, final=True)
                return
            if word == "FAIL" and count > 1:
                sender.send(InferResponse(error=InternalError("the fake engine failed")), final=True)
                return
            piece = word if count == 1 else " " + word
            finish = "length" if count == limit else ("stop" if count == len(words) else None)
            full = text + piece
            cut = min((i for i in (full.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:  # cut before the stop string (this fake does not hold back partial matches)
                piece, finish = full[len(text) : max(cut, len(text))], "stop"
            text += piece
            sender.send(
                self._response(piece, [word], len(prompt), count, finish, top), final=finish is not None
            )
            if finish:
                return
            time.sleep(delay)

    @staticmethod
    def _response(
        piece: str, words: list[str], prompt: int, count: int, finish: str | None, top: int | None
    ) -> InferResponse:
        ids = [zlib.crc32(w.encode()) % 1000 for w in words]
        data = np.empty(1, dtype=object)
        data[0] = piece.encode()
        params: dict[str, Any] = {
            "token_ids": ids,
            "prompt_tokens": prompt,
            "completion_tokens": count,
            "cached_tokens": 0,
        }
        if finish:
            params["finish_reason"] = finish
        if top is not None:
            entries = []
            for token_id in ids:
                logprob = -0.25 * count
                alts = [TopLogprob(1000 + j, f"alt{j}", logprob - j) for j in range(1, top)]
                own = TopLogprob(token_id, piece, logprob)
                entries.append(TokenLogprob(token_id, piece, logprob, [own, *alts] if top else []))
            params["logprobs"] = entries
        return InferResponse(outputs=[Tensor("text_output", "BYTES", (1,), data)], parameters=params)


class FakeLLMModel(Model):
    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return FakeLLMInstance(self, context)


class FakeLLMBackend(Backend):
    def load_model(self, context: ModelContext) -> Model:
        return FakeLLMModel(context)


registry.register("llm_fake", FakeLLMBackend)
LLM_BACKENDS.add("llm_fake")

FAKE_CONFIG = """
backend: "llm_fake"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "messages" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] optional: true }},
  {{ name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true }},
  {{ name: "sampling_parameters" data_type: TYPE_STRING dims: [ 1 ] optional: true }}
]
output [ {{ name: "text_output" data_type: TYPE_STRING dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 2 }} ]
parameters {{ key: "delay_ms" value: {{ string_value: "{delay}" }} }}
"""


@pytest.fixture(scope="module")
def server(module_repo, start_module_server):
    """``fake`` (instant), ``slow`` (100 ms a word) and a plain ONNX model that is not an LLM."""
    module_repo.config("fake", FAKE_CONFIG.format(delay=0))
    module_repo.config("slow", FAKE_CONFIG.format(delay=100))
    module_repo.identity("not_llm")
    return start_module_server(module_repo.root, http_max_input_size=1024 * 1024)


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="none", max_retries=0, timeout=30)


@pytest.fixture
def events() -> Events:
    return EVENTS
