"""Process isolation: the model runs in a stub process that may crash or hang without the server."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nereid.server.types import InferRequest, Tensor

PROCESS = 'parameters { key: "NEREID_ISOLATION" value: { string_value: "process" } }'
TIMEOUT = 'parameters { key: "NEREID_EXECUTE_TIMEOUT_SECONDS" value: { string_value: "1" } }'

# MODE 0 answers with the stub's pid; 1 exits, 2 segfaults, 3 hangs, 4 raises.
FRAGILE_CONFIG = f"""
backend: "python"
input [{{ name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] }}]
output [{{ name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }}]
{PROCESS}
{TIMEOUT}
"""
FRAGILE_MODEL = """
import ctypes
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.calls = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0])
            if mode == 1:
                os._exit(3)
            if mode == 2:
                ctypes.string_at(0)
            if mode == 3:
                time.sleep(60)
            if mode == 4:
                raise ValueError("mode 4 is not allowed")
            self.calls += 1
            pid = pb_utils.Tensor("PID", np.array([os.getpid()], np.int64))
            responses.append(pb_utils.InferenceResponse(output_tensors=[pid]))
        return responses
"""


def _mode(client: httpclient.InferenceServerClient, mode: int) -> int:
    tensor = httpclient.InferInput("MODE", [1], "INT32")
    tensor.set_data_from_numpy(np.array([mode], np.int32))
    return int(client.infer("fragile", [tensor]).as_numpy("PID")[0])


def _failure(client: httpclient.InferenceServerClient, mode: int) -> str:
    with pytest.raises(InferenceServerException) as caught:
        _mode(client, mode)
    return caught.value.message()


def test_crashes_and_hangs_fail_in_flight_requests_and_the_instance_restarts(py_repo, start_server):
    py_repo.model("fragile", FRAGILE_CONFIG, FRAGILE_MODEL)
    py_repo.add_sub()
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    pid = _mode(client, 0)
    assert pid != os.getpid()
    assert _mode(client, 0) == pid

    message = _failure(client, 1)
    assert (
        "model 'fragile' instance 'fragile_0_0'" in message and "exited unexpectedly (exit code 3)" in message
    )
    restarted = _mode(client, 0)
    assert restarted != pid

    assert "killed by signal SIGSEGV" in _failure(client, 2)
    after_segfault = _mode(client, 0)
    assert after_segfault != restarted

    message = _failure(client, 3)
    assert "execute() did not finish within 1.0 s" in message and "restarting" in message
    assert _mode(client, 0) != after_segfault

    assert "ValueError: mode 4 is not allowed" in _failure(client, 4)  # plain exceptions keep the stub
    assert client.is_server_live()
    inputs = [httpclient.InferInput(n, [4], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones(4, np.float32))
    assert client.infer("add_sub", inputs).as_numpy("OUTPUT0").tolist() == [2, 2, 2, 2]


def test_a_crash_in_the_default_mode_is_logged_and_the_server_keeps_serving(py_repo, start_server, caplog):
    """No isolation parameter at all: the stub process is the default, as in Triton."""
    py_repo.model("fragile", FRAGILE_CONFIG.replace(PROCESS, "").replace(TIMEOUT, ""), FRAGILE_MODEL)
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    pid = _mode(client, 0)
    assert pid != os.getpid()
    with caplog.at_level(logging.ERROR, logger="nereid.backends.python.isolation"):
        assert "killed by signal SIGSEGV" in _failure(client, 2)
        assert _mode(client, 0) not in (pid, os.getpid())
        assert "(exit code 3)" in _failure(client, 1)
        assert client.is_server_live() and _mode(client, 0) > 0
    crashes = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 2, crashes
    for message, cause in zip(crashes, ("killed by signal SIGSEGV", "exit code 3"), strict=True):
        assert "model 'fragile' instance 'fragile_0_0'" in message and cause in message, message


def test_isolated_models_keep_the_api(py_repo, start_server):
    """add_sub, a decoupled model, BLS and auto-complete all work across the process boundary."""
    py_repo.add_sub("add_sub", extra=PROCESS)
    py_repo.repeat("repeat", extra=PROCESS)
    py_repo.bls("bls", extra=PROCESS)
    py_repo.model(
        "auto",
        f'backend: "python"\n{PROCESS}\n',
        """
        import os
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(auto_complete_model_config):
                auto_complete_model_config.add_input({"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]})
                auto_complete_model_config.add_output({"name": "OUT", "data_type": "TYPE_STRING", "dims": [1]})
                return auto_complete_model_config

            def execute(self, requests):
                out = np.array([str(os.getpid())], dtype=np.object_)
                return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]) for _ in requests]
    """,
    )
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)

    a, b = np.arange(4, dtype=np.float32), np.full(4, 0.5, np.float32)
    name = httpclient.InferInput("MODEL_NAME", [1], "BYTES")
    name.set_data_from_numpy(np.array([b"add_sub"], dtype=np.object_))
    inputs = [name]
    for tensor_name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = httpclient.InferInput(tensor_name, [4], "FP32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    result = client.infer("bls", inputs)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)

    text = httpclient.InferInput("TEXT", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    stub_pid = int(client.infer("auto", [text]).as_numpy("OUT")[0])
    assert stub_pid != os.getpid()

    async def collect() -> list:
        request = InferRequest(
            "repeat",
            [
                Tensor("IN", "INT32", (3,), np.array([9, 8, 7], np.int32)),
                Tensor("DELAY", "UINT32", (3,), np.zeros(3, np.uint32)),
                Tensor("WAIT", "UINT32", (1,), np.zeros(1, np.uint32)),
            ],
        )
        return [r async for r in running.core.stream(request)]

    responses = running.call(collect())
    assert [int(r.output("OUT").data[0]) for r in responses] == [9, 8, 7]


def test_isolated_initialize_failure_fails_the_load(py_repo, start_server):
    py_repo.model(
        "bad_init",
        f"""
        backend: "python"
        input [{{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }}]
        output [{{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }}]
        {PROCESS}
    """,
        """
        import os

        class TritonPythonModel:
            def initialize(self, args):
                os._exit(7)

            def execute(self, requests):
                return []
    """,
    )
    running = start_server(py_repo.root, exit_on_error=False)
    client = httpclient.InferenceServerClient(running.http_url)
    (row,) = client.get_model_repository_index()
    assert row["state"] == "UNAVAILABLE"
    assert "model 'bad_init'" in row["reason"] and "exited during initialize (exit code 7)" in row["reason"]


def test_a_stub_dying_between_calls_fails_open_streams_and_restarts_on_the_next_call(py_repo, start_server):
    py_repo.model(
        "stream_crash",
        f"""
        backend: "python"
        model_transaction_policy {{ decoupled: true }}
        input [{{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }}]
        output [{{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }}]
        {PROCESS}
    """,
        """
        import os
        import threading
        import time

        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                for request in requests:
                    value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                    threading.Thread(target=self.reply, args=(request.get_response_sender(), value)).start()
                return None

            def reply(self, sender, value):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", value)]))
                if value[0] < 0:
                    time.sleep(0.1)
                    os._exit(5)
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    """,
    )
    running = start_server(py_repo.root)

    def stream(value: int) -> list:
        async def collect() -> list:
            request = InferRequest("stream_crash", [Tensor("IN", "INT32", (1,), np.array([value], np.int32))])
            return [r async for r in running.core.stream(request)]

        return running.call(collect())

    first, failure = stream(-1)
    assert first.error is None and int(first.output("OUT").data[0]) == -1
    assert "model 'stream_crash'" in failure.error.message and "(exit code 5)" in failure.error.message
    (ok,) = stream(4)
    assert ok.error is None and int(ok.output("OUT").data[0]) == 4
