"""The llm backend over gRPC ModelStreamInfer (tritonclient.grpc start_stream): decoupled token responses."""

from __future__ import annotations

import json
import queue

import numpy as np
import tritonclient.grpc as grpcclient

PROMPT = "The quick brown fox"


def _inputs(text: str, sampling: dict | None = None, stream: bool = True) -> list[grpcclient.InferInput]:
    values = {"text_input": text, "sampling_parameters": json.dumps(sampling or {})}
    tensors = []
    for name, value in values.items():
        tensor = grpcclient.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode()], dtype=object))
        tensors.append(tensor)
    flag = grpcclient.InferInput("stream", [1], "BOOL")
    flag.set_data_from_numpy(np.array([stream]))
    return [*tensors, flag]


class Stream:
    """A start_stream session that queues (result, error) pairs."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.items: queue.Queue = queue.Queue()
        self.client.start_stream(lambda result, error: self.items.put((result, error)))

    def until_final(self, timeout: float = 30) -> list:
        items = []
        while True:
            result, error = self.items.get(timeout=timeout)
            items.append((result, error))
            if error is not None or _params(result)["triton_final_response"].bool_param:
                return items

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _params(result: grpcclient.InferResult):
    return result.get_response().parameters


def test_stream_infer_sends_a_response_per_token(llm, greedy_params):
    stream = Stream(llm.running.grpc_url)
    try:
        stream.client.async_stream_infer("tiny", _inputs(PROMPT, greedy_params(6)), request_id="g1")
        items = stream.until_final()
    finally:
        stream.close()
    assert [error for _, error in items] == [None] * 6
    finals = [_params(r)["triton_final_response"].bool_param for r, _ in items]
    assert finals == [False] * 5 + [True]
    last = _params(items[-1][0])
    assert last["finish_reason"].string_param == "length" and last["completion_tokens"].int64_param == 6
    assert all(r.get_response().id == "g1" for r, _ in items)
    text = "".join(r.as_numpy("text_output")[0].decode() for r, _ in items)
    http = llm.generate("tiny", {"text_input": PROMPT, "parameters": greedy_params(6)})
    assert PROMPT + text == http["text_output"]  # a non-streamed generate starts with the prompt


def test_stream_false_sends_one_final_response(llm, greedy_params):
    stream = Stream(llm.running.grpc_url)
    try:
        stream.client.async_stream_infer("tiny", _inputs(PROMPT, greedy_params(5), stream=False))
        (item,) = stream.until_final()
    finally:
        stream.close()
    result, error = item
    assert error is None and len(json.loads(_params(result)["token_ids"].string_param)) == 5


def test_bad_sampling_value_is_an_error_on_the_stream_and_the_stream_stays_open(llm, greedy_params):
    stream = Stream(llm.running.grpc_url)
    try:
        stream.client.async_stream_infer("tiny", _inputs(PROMPT, {"temperature": -2}))
        ((_, error),) = stream.until_final()
        assert error is not None and "temperature must be >= 0" in str(error)
        stream.client.async_stream_infer("tiny", _inputs(PROMPT, greedy_params(3)))
        assert [e for _, e in stream.until_final()] == [None] * 3
    finally:
        stream.close()


def test_cancelling_the_stream_aborts_the_sequence(llm, greedy_params):
    before = llm.engine_call("tiny", lambda e: e.stats().num_finished.get("abort", 0))
    stream = Stream(llm.running.grpc_url)
    try:
        stream.client.async_stream_infer("tiny", _inputs(PROMPT, greedy_params(480)))
        _result, error = stream.items.get(timeout=30)
        assert error is None
    finally:
        stream.close(cancel=True)
    state = llm.wait_idle("tiny")
    assert state["stats"].num_finished.get("abort", 0) == before + 1
