"""In-process BLS: core calls scheduled on the server loop from a model's thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from nereid.backends.python import pb_utils
from nereid.backends.python.bls import CoreBls
from nereid.server.errors import NotFound
from nereid.server.types import InferRequest, InferResponse, Tensor


class FakeCore:
    """Doubles every input; ``missing`` is an unknown model; ``count`` streams N responses."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop

    async def infer(self, request: InferRequest) -> InferResponse:
        if request.model_name == "missing":
            raise NotFound("Request for unknown model: 'missing' is not found")
        return InferResponse(
            outputs=[Tensor(t.name, t.datatype, t.shape, t.data * 2) for t in request.inputs]
        )

    async def stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        for index in range(int(request.inputs[0].data[0])):
            yield InferResponse(outputs=[Tensor("I", "INT64", (1,), np.array([index]))])

    def model_ready(self, name: str, version: str) -> bool:
        return name != "missing"


@pytest.fixture
def server_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _request(model: str, value: int = 3) -> pb_utils.InferenceRequest:
    return pb_utils.InferenceRequest(model_name=model, inputs=[pb_utils.Tensor("X", np.array([value]))])


def test_infer_stream_and_errors(server_loop):
    bls = CoreBls(FakeCore(server_loop))
    (response,) = list(bls.run(_request("double"), decoupled=False))
    assert pb_utils.get_output_tensor_by_name(response, "X").as_numpy().tolist() == [6]
    (missing,) = list(bls.run(_request("missing"), decoupled=False))
    assert missing.error().code_name() == "NOT_FOUND" and "missing" in missing.error().message()
    streamed = list(bls.run(_request("count", 3), decoupled=True))
    assert [r.output_tensors()[0].as_numpy().tolist() for r in streamed] == [[0], [1], [2]]
    assert bls.model_ready("double", "") and not bls.model_ready("missing", "")


def test_a_stopped_server_answers_unavailable_instead_of_hanging():
    stopped = asyncio.new_event_loop()
    try:
        (response,) = list(CoreBls(FakeCore(stopped)).run(_request("double"), decoupled=False))
    finally:
        stopped.close()
    assert response.error().code_name() == "UNAVAILABLE"
    (response,) = list(CoreBls(FakeCore(None)).run(_request("double"), decoupled=False))
    assert "running server" in response.error().message()


def test_without_a_core_every_call_says_the_server_is_not_running():
    bls = CoreBls(None)
    (response,) = list(bls.run(_request("double"), decoupled=False))
    assert response.error().code_name() == "UNAVAILABLE" and "running server" in response.error().message()
    for call in (lambda: bls.model_ready("double", ""), lambda: bls.unload_model("double")):
        with pytest.raises(pb_utils.TritonModelException, match="BLS needs a running server"):
            call()


def test_load_model_with_a_bad_config_raises_a_triton_model_exception(server_loop):
    bls = CoreBls(FakeCore(server_loop))
    with pytest.raises(
        pb_utils.TritonModelException, match=r"load_model\('double'\) config: .*max_batch_sizes"
    ):
        bls.load_model("double", '{"max_batch_sizes": 4}')
    with pytest.raises(pb_utils.TritonModelException, match="is not JSON"):
        bls.load_model("double", "{")
