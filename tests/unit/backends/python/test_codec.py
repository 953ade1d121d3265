"""Converting between Nereid requests/responses and pb_utils objects, checked against the config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from nereid.backends.python import pb_utils
from nereid.backends.python.backend import PythonBackend
from nereid.backends.python.codec import Codec, infer_request, pb_response, triton_error
from nereid.backends.python.instance import Isolation
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import ErrorCode, NotFound
from nereid.server.model_config import ConfigError, config_to_dict
from nereid.server.types import InferRequest, InferResponse, RequestedOutput, Tensor

CONFIG = """
name: "m"
backend: "python"
max_batch_size: 4
input [{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "S" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "H" data_type: TYPE_BF16 dims: [ 2 ] }
]
"""


def _config(text: str = CONFIG) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def _request(outputs: tuple[str, ...] = ()) -> InferRequest:
    data = np.ones((1, 2), np.float32)
    return InferRequest(
        "m",
        [Tensor("X", "FP32", (1, 2), data)],
        id="r1",
        outputs=[RequestedOutput(n) for n in outputs],
        parameters={"sequence_id": 5, "k": "v"},
    )


def test_pb_request_carries_inputs_ids_and_the_requested_outputs():
    codec = Codec("m", 3, _config())
    request = codec.pb_request(_request())
    assert request.request_id() == "r1" and request.correlation_id() == 5 and request.model_version() == 3
    assert request.inputs()[0].name() == "X" and request.inputs()[0].datatype() == "FP32"
    assert request.requested_output_names() == ["Y", "S", "H"]
    assert json.loads(request.parameters()) == {"sequence_id": 5, "k": "v"}
    assert codec.pb_request(_request(("S",))).requested_output_names() == ["S"]


def test_outputs_are_converted_and_filtered():
    codec = Codec("m", 1, _config())
    response = pb_utils.InferenceResponse(
        [
            pb_utils.Tensor("Y", np.zeros((1, 2), np.float32)),
            pb_utils.Tensor("S", np.array([["héllo", b"raw"]], dtype=np.object_)),
            pb_utils.Tensor("H", np.zeros((1, 2), np.uint16)),
        ],
        parameters={"p": 1},
    )
    out = codec.response(response, _request())
    assert out.error is None and out.parameters == {"p": 1} and (out.model_name, out.id) == ("m", "r1")
    assert [(t.name, t.datatype, t.shape) for t in out.outputs] == [
        ("Y", "FP32", (1, 2)),
        ("S", "BYTES", (1, 2)),
        ("H", "BF16", (1, 2)),
    ]
    assert out.output("S").data.tolist() == [["héllo".encode(), b"raw"]]
    assert [t.name for t in codec.response(response, _request(("S",))).outputs] == ["S"]


@pytest.mark.parametrize(
    ("tensor", "problem"),
    [
        (
            pb_utils.Tensor("Y", np.zeros((1, 2), np.float64)),
            "output 'Y': datatype FP64 (numpy float64) does not match the config's FP32",
        ),
        (
            pb_utils.Tensor("Y", np.zeros((1, 3), np.float32)),
            "output 'Y': shape [1, 3] does not match the config's [-1, 2]",
        ),
        (pb_utils.Tensor("Y", np.float32(1)), "output 'Y': shape [] does not match"),
        (
            pb_utils.Tensor("Q", np.zeros((1, 2), np.float32)),
            "output 'Q': the model config declares no output",
        ),
        (
            pb_utils.Tensor("Y", np.zeros((1, 2), np.complex64)),
            "numpy dtype complex64 has no Triton datatype",
        ),
    ],
)
def test_bad_outputs_fail_the_response(tensor, problem):
    out = Codec("m", 1, _config()).response(pb_utils.InferenceResponse([tensor]), _request())
    assert out.outputs == [] and out.error is not None and out.error.code == ErrorCode.INTERNAL
    assert out.error.message.startswith("model 'm' ") and problem in out.error.message


def test_user_errors_keep_their_code_and_message():
    error = pb_utils.TritonError("bad X", pb_utils.TritonError.INVALID_ARG)
    out = Codec("m", 1, _config()).response(pb_utils.InferenceResponse(error=error), _request())
    assert out.error.message == "bad X" and out.error.code == ErrorCode.INVALID_ARG
    assert triton_error(NotFound("gone")).code() == pb_utils.TritonError.NOT_FOUND


def test_bls_conversions():
    request = pb_utils.InferenceRequest(
        model_name="target",
        requested_output_names=["OUT"],
        model_version=2,
        timeout=50,
        request_id="b",
        inputs=[
            pb_utils.Tensor("T", np.array(["a", b"b"], dtype=np.object_)),
            pb_utils.Tensor("N", np.ones(2)),
        ],
    )
    converted = infer_request(request)
    assert (converted.model_name, converted.model_version, converted.id) == ("target", "2", "b")
    assert [(t.name, t.datatype) for t in converted.inputs] == [("T", "BYTES"), ("N", "FP64")]
    assert converted.inputs[0].data.tolist() == [b"a", b"b"]
    assert converted.parameters == {"timeout": 50} and [o.name for o in converted.outputs] == ["OUT"]
    assert infer_request(pb_utils.InferenceRequest(model_name="t")).model_version == ""
    back = pb_response(InferResponse(outputs=[Tensor("OUT", "INT32", (1,), np.array([4], np.int32))]))
    assert pb_utils.get_output_tensor_by_name(back, "OUT").as_numpy().tolist() == [4]
    failed = pb_response(InferResponse(error=NotFound("no model")))
    assert failed.error().message() == "no model" and failed.error().code_name() == "NOT_FOUND"


def test_model_config_dict_is_triton_json():
    data = config_to_dict(_config(), every_field=True)
    assert data["input"][0]["dims"] == [2] and data["input"][0]["data_type"] == "TYPE_FP32"
    assert data["max_batch_size"] == 4 and data["parameters"] == {} and data["instance_group"] == []
    empty = config_to_dict(mc.ModelConfig(name="e"), every_field=True)
    assert empty["input"] == [] and empty["output"] == [] and "model_transaction_policy" not in empty


def test_isolation_parameters():
    assert Isolation.from_config(_config()) == Isolation(True, 0.0)  # a stub process by default, as in Triton
    in_process = CONFIG + 'parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }'
    assert Isolation.from_config(_config(in_process)) == Isolation(False, 0.0)
    text = (
        CONFIG
        + """
        parameters { key: "NEREID_ISOLATION" value: { string_value: "process" } }
        parameters { key: "NEREID_EXECUTE_TIMEOUT_SECONDS" value: { string_value: "2.5" } }
    """
    )
    assert Isolation.from_config(_config(text)) == Isolation(True, 2.5)
    bad = CONFIG + 'parameters { key: "NEREID_EXECUTE_TIMEOUT_SECONDS" value: { string_value: "soon" } }'
    with pytest.raises(ConfigError, match="NEREID_EXECUTE_TIMEOUT_SECONDS must be a number"):
        Isolation.from_config(_config(bad))


def test_backend_auto_complete_reports_import_errors_as_config_errors(tmp_path: Path):
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text("def auto_complete_config(:\n")
    config = _config('name: "m" backend: "python"')
    config.default_model_filename = "model.py"
    with pytest.raises(ConfigError, match=r"model 'm': failed to import .*SyntaxError"):
        PythonBackend().auto_complete_config(config, version)
    (version / "model.py").write_text("raise SystemExit('no auto_complete_config here')\n")
    with pytest.raises(ConfigError, match="SystemExit"):
        PythonBackend().auto_complete_config(config, version)
