"""Broken model files fail their own load or requests, with the model and the cause named.

Each case runs in both modes: in-process (the opt-in) and in a stub process (the default); what
only a stub process survives (crashes, hangs) is in test_isolation.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nereid.server.types import InferRequest, Tensor

CONFIG = """
backend: "python"
input [{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }]
{extra}
"""

MODEL = """
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            {body}
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return responses
"""


IN_PROCESS = 'parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }'
STUB = 'parameters { key: "NEREID_ISOLATION" value: { string_value: "process" } }'


@pytest.fixture(params=["in_process", "stub"])
def mode(request) -> str:
    """The isolation parameter of each model a test writes."""
    return IN_PROCESS if request.param == "in_process" else STUB


def _model(
    py_repo,
    name: str,
    body: str = "y = x",
    extra: str = "",
    source: str | None = None,
    mode: str = IN_PROCESS,
) -> None:
    if "NEREID_ISOLATION" not in extra:
        extra = f"{extra}\n{mode}"
    py_repo.model(name, CONFIG.replace("{extra}", extra), source or MODEL.replace("{body}", body))


def _infer(client: httpclient.InferenceServerClient, model: str, value: float = 1.0) -> np.ndarray:
    tensor = httpclient.InferInput("X", [4], "FP32")
    tensor.set_data_from_numpy(np.full(4, value, np.float32))
    return client.infer(model, [tensor]).as_numpy("Y")


def _error(
    client: httpclient.InferenceServerClient, model: str, value: float = 1.0
) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        _infer(client, model, value)
    return caught.value


def test_broken_model_files_fail_their_own_load(py_repo, start_server, mode):
    py_repo.add_sub(extra=mode)
    _model(
        py_repo,
        "syntax_error",
        source="import triton_python_backend_utils as pb_utils\ndef execute(self:\n",
        mode=mode,
    )
    _model(
        py_repo,
        "no_class",
        source="class Model:\n    def execute(self, requests):\n        return []\n",
        mode=mode,
    )
    _model(
        py_repo,
        "init_raises",
        source="""
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def initialize(self, args):
                raise pb_utils.TritonModelException("weights file missing")

            def execute(self, requests):
                return []
    """,
        mode=mode,
    )
    _model(py_repo, "import_raises", source="import not_a_module_anywhere\n", mode=mode)
    _model(
        py_repo,
        "auto_complete_raises",
        source="""
        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(auto_complete_model_config):
                auto_complete_model_config.add_input({"name": "X", "data_type": "TYPE_INT8", "dims": [4]})
                return auto_complete_model_config

            def execute(self, requests):
                return []
    """,
        mode=mode,
    )
    _model(
        py_repo,
        "bad_isolation",
        extra='parameters { key: "NEREID_ISOLATION" value: { string_value: "vm" } }',
        mode=mode,
    )
    running = start_server(py_repo.root, exit_on_error=False)
    client = httpclient.InferenceServerClient(running.http_url)
    rows = {row["name"]: row for row in client.get_model_repository_index()}
    expected = {
        "syntax_error": ["SyntaxError", "line 2"],
        "no_class": ["does not define a class 'TritonPythonModel'"],
        "init_raises": ["initialize() failed", "weights file missing", "init_raises_0_0"],
        "import_raises": ["ModuleNotFoundError", "not_a_module_anywhere"],
        "auto_complete_raises": ["configuration expects datatype TYPE_FP32", "model provides TYPE_INT8"],
        "bad_isolation": ["NEREID_ISOLATION must be 'none' or 'process'"],
    }
    for name, fragments in expected.items():
        assert rows[name]["state"] == "UNAVAILABLE", name
        reason = rows[name]["reason"]
        assert f"model '{name}'" in reason, reason
        for fragment in fragments:
            assert fragment in reason, (name, reason)
    assert rows["add_sub"]["state"] == "READY"
    a = np.ones(4, np.float32)
    inputs = [httpclient.InferInput(n, [4], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a + a)


def test_bad_responses_fail_the_request_and_name_the_cause(py_repo, start_server, mode):
    _model(
        py_repo,
        "wrong_count",
        source=MODEL.replace("        return responses", "        return responses[1:]").replace(
            "{body}", "y = x"
        ),
        mode=mode,
    )
    _model(
        py_repo,
        "returns_none",
        source=MODEL.replace("        return responses", "        return None").replace("{body}", "y = x"),
        mode=mode,
    )
    _model(py_repo, "wrong_dtype", "y = x.astype(np.float64)", mode=mode)
    _model(py_repo, "wrong_shape", "y = x[:3]", mode=mode)
    _model(
        py_repo,
        "undeclared",
        "y = x\n            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor('Z', x)]))\n"
        "            continue",
        mode=mode,
    )
    _model(
        py_repo,
        "per_request_error",
        source=MODEL.replace(
            'responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))',
            "responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError('X must be positive', "
            "pb_utils.TritonError.INVALID_ARG)))",
        ).replace("{body}", "pass"),
        mode=mode,
    )
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    cases = {
        "wrong_count": "execute() returned 0 response(s) for 1 request(s)",
        "returns_none": "execute() returned None",
        "wrong_dtype": "output 'Y': datatype FP64 (numpy float64) does not match the config's FP32",
        "wrong_shape": "output 'Y': shape [3] does not match the config's [4]",
        "undeclared": "output 'Z': the model config declares no output of that name",
    }
    for model, fragment in cases.items():
        error = _error(client, model)
        assert f"model '{model}'" in error.message(), error.message()
        assert fragment in error.message(), (model, error.message())
        assert error.status() == "500"
    error = _error(client, "per_request_error")
    assert error.message() == "X must be positive" and error.status() == "400"


def test_exceptions_in_execute_fail_requests_and_the_instance_keeps_serving(py_repo, start_server, mode):
    _model(py_repo, "raises", "y = x if x[0] >= 0 else x / {}['boom']", mode=mode)
    _model(py_repo, "exits", "y = x\n            if x[0] < 0:\n                sys.exit(3)", mode=mode)
    _model(
        py_repo,
        "typed",
        "y = x\n            if x[0] < 0:\n                raise pb_utils.TritonModelException('negative input')",
        mode=mode,
    )
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    error = _error(client, "raises", -1)
    assert "Failed to process the request(s) for model 'raises' instance 'raises_0_0'" in error.message()
    assert "KeyError: 'boom' (at model.py:" in error.message() and "in execute)" in error.message()
    assert "SystemExit: 3" in _error(client, "exits", -1).message()
    assert "negative input" in _error(client, "typed", -1).message()
    for model in ("raises", "exits", "typed"):
        np.testing.assert_array_equal(_infer(client, model, 2.0), np.full(4, 2.0, np.float32))


def test_in_process_timeout_fails_requests_while_the_call_runs_on(py_repo, start_server):
    _model(
        py_repo,
        "slow",
        "time.sleep(float(x[0]))\n            y = x",
        extra='parameters { key: "NEREID_EXECUTE_TIMEOUT_SECONDS" value: { string_value: "0.3" } }',
    )
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    started = time.monotonic()
    error = _error(client, "slow", 1.2)
    assert time.monotonic() - started < 1.0
    assert "execute() did not return within 0.3 s" in error.message() and "model 'slow'" in error.message()
    busy = _error(client, "slow", 0.0)
    assert busy.status() == "503" and "still running" in busy.message()
    time.sleep(1.2)
    np.testing.assert_array_equal(_infer(client, "slow", 0.0), np.zeros(4, np.float32))


def test_decoupled_execute_raising_ends_the_stream_with_the_error(py_repo, start_server, mode):
    py_repo.model(
        "stream_raises",
        """
        backend: "python"
        model_transaction_policy { decoupled: true }
        input [{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }]
        output [{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }]
    """
        + mode,
        """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                for request in requests:
                    sender = request.get_response_sender()
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", request.inputs()[0].as_numpy())]))
                raise RuntimeError("lost the GPU")
    """,
    )
    running = start_server(py_repo.root)

    async def collect() -> list:
        request = InferRequest("stream_raises", [Tensor("X", "FP32", (4,), np.ones(4, np.float32))])
        return [r async for r in running.core.stream(request)]

    first, last = running.call(collect())
    assert first.error is None
    np.testing.assert_array_equal(first.output("Y").data, np.ones(4, np.float32))
    assert (
        "model 'stream_raises'" in last.error.message and "RuntimeError: lost the GPU" in last.error.message
    )
