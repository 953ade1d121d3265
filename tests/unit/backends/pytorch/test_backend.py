"""The PyTorch backend driven directly (no server): conventions, batching, dtypes, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nereid.backends.base import InstanceContext, ModelContext
from nereid.backends.pytorch.backend import PyTorchBackend, TorchSettings
from nereid.server.errors import InternalError, InvalidArgument, Unavailable
from nereid.server.model_config import ConfigError
from nereid.server.repository import prepare_config
from nereid.server.types import InferRequest, RequestedOutput, Tensor

# torch 2.13 deprecates TorchScript (torch.jit.*) in favour of torch.export; Triton still serves it.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")


def load(folder: Path, kind: str = "KIND_CPU"):
    """Config through the real loader (auto-complete, defaults, validation), then one instance."""
    config = prepare_config(folder)
    context = ModelContext(folder.name, 1, config, folder, folder / "1")
    model = PyTorchBackend().load_model(context)
    return model.create_instance(InstanceContext("g", 0, kind))


def request(model: str, outputs: tuple[str, ...] = (), **inputs: np.ndarray) -> InferRequest:
    tensors = [Tensor(name, _api(a), tuple(a.shape), a) for name, a in inputs.items()]
    return InferRequest(model, tensors, outputs=[RequestedOutput(o) for o in outputs])


def _api(array: np.ndarray) -> str:
    names = {
        np.dtype(np.float32): "FP32",
        np.dtype(np.float16): "FP16",
        np.dtype(np.float64): "FP64",
        np.dtype(np.int64): "INT64",
        np.dtype(np.int32): "INT32",
        np.dtype(np.int16): "INT16",
        np.dtype(np.int8): "INT8",
        np.dtype(np.uint8): "UINT8",
        np.dtype(np.bool_): "BOOL",
    }
    return names.get(array.dtype, "BF16")  # uint16 arrays carry BF16 in these tests


def outputs(response) -> dict[str, np.ndarray]:
    assert response.error is None, response.error
    return {t.name: t.data for t in response.outputs}


def readonly(array: np.ndarray) -> np.ndarray:
    """Like request data decoded from the wire: a read-only view."""
    view = np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)
    assert not view.flags.writeable
    return view


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Conventions


def test_indexed_inputs_batch_rows_go_back_to_their_requests(tm, root, rng):
    folder = tm.write_model(
        root,
        "mix",
        tm.script_bytes(tm.Mix()),
        tm.config_text(
            [("INPUT__0", "FP32", [4]), ("INPUT__1", "FP32", [4])],
            [("OUTPUT__0", "FP32", [4]), ("OUTPUT__1", "FP32", [4])],
        ),
    )
    instance = load(folder)
    batches = [rng.standard_normal((n, 4), dtype=np.float32) for n in (1, 2, 3)]
    others = [rng.standard_normal((n, 4), dtype=np.float32) for n in (1, 2, 3)]
    requests = [
        request("mix", INPUT__0=readonly(a), INPUT__1=readonly(b))
        for a, b in zip(batches, others, strict=True)
    ]
    responses = instance.execute(requests)
    reference = torch.jit.load(str(folder / "1" / "model.pt"))
    for a, b, response in zip(batches, others, responses, strict=True):
        with torch.inference_mode():
            expected = reference(torch.from_numpy(a), torch.from_numpy(b))
        got = outputs(response)
        np.testing.assert_array_equal(got["OUTPUT__0"], expected[0].numpy())
        np.testing.assert_array_equal(got["OUTPUT__1"], expected[1].numpy())
    assert instance.input_plan.convention == "NAMED_INDEX"


def test_inputs_named_after_forward_arguments_in_any_config_order(tm, root):
    folder = tm.write_model(
        root,
        "named",
        tm.script_bytes(tm.Mix()),
        tm.config_text(
            [("y", "FP32", [2]), ("x", "FP32", [2])], [("difference", "FP32", [2]), ("blend", "FP32", [2])]
        ),
    )
    instance = load(folder)
    x, y = np.array([[5, 7]], np.float32), np.array([[1, 2]], np.float32)
    got = outputs(instance.execute([request("named", y=y, x=x)])[0])
    np.testing.assert_array_equal(got["difference"], x - y)
    np.testing.assert_array_equal(got["blend"], 2 * x + y)
    assert instance.input_plan.convention == "FORWARD_ARGUMENT"


def test_other_names_follow_config_order(tm, root):
    folder = tm.write_model(
        root,
        "ordered",
        tm.script_bytes(tm.Mix()),
        tm.config_text(
            [("first", "FP32", [1]), ("second", "FP32", [1])], [("a", "FP32", [1]), ("b", "FP32", [1])]
        ),
    )
    instance = load(folder)
    got = outputs(
        instance.execute(
            [request("ordered", first=np.array([[3]], np.float32), second=np.array([[1]], np.float32))]
        )[0]
    )
    assert got["a"].tolist() == [[2.0]] and got["b"].tolist() == [[7.0]]
    assert instance.input_plan.convention == "STRICT_CONFIG_ORDERING"


def test_output_indices_pick_results_out_of_config_order(tm, root):
    folder = tm.write_model(
        root,
        "steps",
        tm.script_bytes(tm.Steps()),
        tm.config_text(
            [("INPUT__0", "INT64", [1])], [("OUTPUT__2", "INT64", [1]), ("OUTPUT__0", "INT64", [1])]
        ),
    )
    got = outputs(load(folder).execute([request("steps", INPUT__0=np.array([[10]], np.int64))])[0])
    assert got == {"OUTPUT__2": got["OUTPUT__2"], "OUTPUT__0": got["OUTPUT__0"]}
    assert got["OUTPUT__2"].tolist() == [[13]] and got["OUTPUT__0"].tolist() == [[11]]


def test_only_requested_outputs_are_returned(tm, root):
    folder = tm.write_model(
        root,
        "steps",
        tm.script_bytes(tm.Steps()),
        tm.config_text(
            [("INPUT__0", "INT64", [1])], [("OUTPUT__0", "INT64", [1]), ("OUTPUT__1", "INT64", [1])]
        ),
    )
    response = load(folder).execute([request("steps", ("OUTPUT__1",), INPUT__0=np.array([[1]], np.int64))])[0]
    assert [t.name for t in response.outputs] == ["OUTPUT__1"]


def test_optional_input_left_out_uses_the_forward_default(tm, root):
    folder = tm.write_model(
        root,
        "scale",
        tm.script_bytes(tm.ScaleOptional()),
        tm.config_text(
            [("x", "FP32", [2])],
            [("OUTPUT__0", "FP32", [2])],
            extra='input [ { name: "scale" data_type: TYPE_FP32 dims: [ 2 ] optional: true } ]',
        ),
    )
    instance = load(folder)
    x = np.array([[1, 2]], np.float32)
    assert outputs(instance.execute([request("scale", x=x)])[0])["OUTPUT__0"].tolist() == [[10, 20]]
    scaled = instance.execute([request("scale", x=x, scale=np.array([[3, 3]], np.float32))])[0]
    assert outputs(scaled)["OUTPUT__0"].tolist() == [[3, 6]]


def test_torch_export_program(tm, root, rng):
    data = tm.export_bytes(tm.Mix(), (torch.ones(2, 4), torch.ones(2, 4)))
    folder = tm.write_model(
        root,
        "exported",
        data,
        tm.config_text(
            [("INPUT__0", "FP32", [4]), ("INPUT__1", "FP32", [4])],
            [("OUTPUT__0", "FP32", [4]), ("OUTPUT__1", "FP32", [4])],
            platform="torch_aoti",
        ),
        filename="model.pt2",
    )
    instance = load(folder)
    assert instance.program.format == "torch.export"
    a, b = rng.standard_normal((5, 4), dtype=np.float32), rng.standard_normal((5, 4), dtype=np.float32)
    got = outputs(instance.execute([request("exported", INPUT__0=a, INPUT__1=b)])[0])
    with torch.inference_mode():
        expected = torch.export.load(str(folder / "1" / "model.pt2")).module()(
            torch.from_numpy(a), torch.from_numpy(b)
        )
    np.testing.assert_array_equal(got["OUTPUT__0"], expected[0].numpy())
    np.testing.assert_array_equal(got["OUTPUT__1"], expected[1].numpy())


def test_exported_program_inputs_by_argument_name(tm, root):
    data = tm.export_bytes(tm.Mix(), (torch.ones(2, 1), torch.ones(2, 1)))
    folder = tm.write_model(
        root,
        "exported_named",
        data,
        tm.config_text(
            [("y", "FP32", [1]), ("x", "FP32", [1])],
            [("d", "FP32", [1]), ("b", "FP32", [1])],
            platform="",
            extra='default_model_filename: "model.pt2"',
        ),
        filename="model.pt2",
    )
    got = outputs(
        load(folder).execute(
            [request("exported_named", x=np.array([[4]], np.float32), y=np.array([[1]], np.float32))]
        )[0]
    )
    assert got["d"].tolist() == [[3.0]] and got["b"].tolist() == [[9.0]]


@pytest.mark.parametrize(
    "datatype", ["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "BOOL", "BF16"]
)
def test_datatypes_round_trip(tm, root, datatype):
    folder = tm.write_model(
        root,
        f"twice_{datatype.lower()}",
        tm.script_bytes(tm.Twice()),
        tm.config_text([("INPUT__0", datatype, [3])], [("OUTPUT__0", datatype, [3])]),
    )
    if datatype == "BF16":
        values = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.bfloat16)
        array = values.view(torch.uint16).numpy()
        expected = (values + values).view(torch.uint16).numpy()
    elif datatype == "BOOL":
        array = np.array([[True, False, True]])
        expected = array
    else:
        array = np.array(
            [[1, 2, 3]],
            dtype={
                "FP16": np.float16,
                "FP32": np.float32,
                "FP64": np.float64,
                "INT8": np.int8,
                "INT16": np.int16,
                "INT32": np.int32,
                "INT64": np.int64,
                "UINT8": np.uint8,
            }[datatype],
        )
        expected = array + array
    response = load(folder).execute([request(folder.name, INPUT__0=readonly(array))])[0]
    (tensor,) = response.outputs
    assert tensor.datatype == datatype and tensor.shape == (1, 3)
    assert tensor.data.dtype == expected.dtype
    np.testing.assert_array_equal(tensor.data, expected)


def test_unbatched_model_runs_each_request_alone(tm, root):
    folder = tm.write_model(
        root,
        "flat",
        tm.script_bytes(tm.Affine()),
        tm.config_text([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3])], max_batch_size=0),
    )
    instance = load(folder)
    xs = [np.full(4, v, np.float32) for v in (1, 2)]
    responses = instance.execute([request("flat", INPUT__0=x) for x in xs])
    reference = torch.jit.load(str(folder / "1" / "model.pt"))
    for x, response in zip(xs, responses, strict=True):
        with torch.inference_mode():
            expected = reference(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(outputs(response)["OUTPUT__0"], expected)


def test_inference_mode_off_uses_no_grad(tm, root):
    folder = tm.write_model(
        root,
        "nograd",
        tm.script_bytes(tm.Affine()),
        tm.config_text(
            [("INPUT__0", "FP32", [4])],
            [("OUTPUT__0", "FP32", [3])],
            extra='parameters { key: "INFERENCE_MODE" value: { string_value: "false" } }\n'
            'parameters { key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "true" } }',
        ),
    )
    instance = load(folder)
    assert not instance.settings.inference_mode and not instance.settings.optimized_execution
    assert outputs(instance.execute([request("nograd", INPUT__0=np.ones((1, 4), np.float32))])[0])


# ---------------------------------------------------------------------------------------------
# Failures at run time


def test_forward_error_fails_the_batch_with_the_model_and_torch_message(tm, root):
    folder = tm.write_model(
        root,
        "picky",
        tm.script_bytes(tm.Picky()),
        tm.config_text([("INPUT__0", "FP32", [2])], [("OUTPUT__0", "FP32", [2])]),
    )
    instance = load(folder)
    responses = instance.execute(
        [
            request("picky", INPUT__0=np.array([[-5, -5]], np.float32)),
            request("picky", INPUT__0=np.array([[1, 1]], np.float32)),
        ]
    )
    for response in responses:  # one merged batch: both requests share its failure
        assert isinstance(response.error, InternalError)
        assert "model 'picky': PyTorch execute failure" in response.error.message
        assert "Picky refuses negative input" in response.error.message
    assert outputs(instance.execute([request("picky", INPUT__0=np.array([[1, 1]], np.float32))])[0])


def test_forward_error_without_batching_fails_only_that_request(tm, root):
    folder = tm.write_model(
        root,
        "picky",
        tm.script_bytes(tm.Picky()),
        tm.config_text([("INPUT__0", "FP32", [2])], [("OUTPUT__0", "FP32", [2])], max_batch_size=0),
    )
    bad, good = load(folder).execute(
        [
            request("picky", INPUT__0=np.array([-1, -1], np.float32)),
            request("picky", INPUT__0=np.array([1, 1], np.float32)),
        ]
    )
    assert isinstance(bad.error, InternalError) and "Picky refuses negative input" in bad.error.message
    assert outputs(good)["OUTPUT__0"].tolist() == [1, 1]


def test_batched_model_must_return_a_row_per_input_row(tm, root):
    folder = tm.write_model(
        root,
        "rows",
        tm.script_bytes(tm.Rows()),
        tm.config_text([("INPUT__0", "FP32", [2])], [("OUTPUT__0", "FP32", [2])]),
    )
    (response,) = load(folder).execute([request("rows", INPUT__0=np.ones((3, 2), np.float32))])
    assert isinstance(response.error, InternalError)
    assert re.search(r"output 'OUTPUT__0' has shape \[1, 2\].*3 row\(s\)", response.error.message)


def test_more_outputs_than_results(tm, root):
    folder = tm.write_model(
        root,
        "few",
        tm.script_bytes(tm.Affine()),
        tm.config_text([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3]), ("OUTPUT__1", "FP32", [3])]),
    )
    (response,) = load(folder).execute([request("few", INPUT__0=np.ones((1, 4), np.float32))])
    assert isinstance(response.error, InternalError)
    assert "output 'OUTPUT__1' is result 1 but forward returned 1 value" in response.error.message


# ---------------------------------------------------------------------------------------------
# Failures at load time


def test_config_without_inputs_or_outputs_fails_validation_clearly(tm, root):
    folder = tm.write_model(
        root, "bare", tm.script_bytes(tm.Affine()), 'platform: "pytorch_libtorch"\nmax_batch_size: 4\n'
    )
    with pytest.raises(ConfigError) as info:
        prepare_config(folder)
    message = info.value.message
    assert str(folder) in message and "model 'bare' lists no 'input' and no 'output'" in message
    assert "cannot auto-complete" in message and "INPUT__0" in message and "OUTPUT__0" in message


def test_config_without_outputs_names_what_is_missing(tm, root):
    folder = tm.write_model(
        root, "half", tm.script_bytes(tm.Affine()), tm.config_text([("INPUT__0", "FP32", [4])], [])
    )
    with pytest.raises(ConfigError, match="lists no 'output'"):
        prepare_config(folder)


def test_missing_io_fails_the_load_even_without_auto_complete(tm, root):
    folder = tm.write_model(root, "bare", tm.script_bytes(tm.Affine()), 'platform: "pytorch_libtorch"\n')
    config = prepare_config(folder, auto_complete=False)
    with pytest.raises(ConfigError, match="lists no 'input'"):
        PyTorchBackend().load_model(ModelContext("bare", 1, config, folder, folder / "1"))


def test_bytes_tensors_are_refused(tm, root):
    folder = tm.write_model(
        root,
        "strings",
        tm.script_bytes(tm.Affine()),
        tm.config_text([("INPUT__0", "STRING", [1])], [("OUTPUT__0", "FP32", [3])]),
    )
    with pytest.raises(
        ConfigError, match=r"input 'INPUT__0' is TYPE_STRING \(BYTES\), which the PyTorch backend does not"
    ):
        prepare_config(folder)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\x01garbage bytes that are no zip", "is not a TorchScript or torch.export archive"),
        (b"", "is not a TorchScript or torch.export archive"),
    ],
)
def test_garbage_file_names_the_model_and_the_file(tm, root, content, expected):
    folder = tm.write_model(
        root, "junk", content, tm.config_text([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3])])
    )
    with pytest.raises(InvalidArgument) as info:
        load(folder)
    assert "model 'junk'" in info.value.message and str(folder / "1" / "model.pt") in info.value.message
    assert expected in info.value.message and "torch.jit.script" in info.value.message


def test_state_dict_checkpoint_is_not_a_program(tm, root):
    import io

    buffer = io.BytesIO()
    torch.save(tm.Affine().state_dict(), buffer)
    folder = tm.write_model(
        root,
        "ckpt",
        buffer.getvalue(),
        tm.config_text([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3])]),
    )
    with pytest.raises(InvalidArgument, match=r"model 'ckpt': '.*model.pt' is a torch.save\(\) checkpoint"):
        load(folder)


def test_damaged_torchscript_fails_with_the_torch_reason(tm, root):
    # Cut the archive short: the zip directory at its end is gone, whatever the contents.
    data = tm.script_bytes(tm.Affine())[:-200]
    folder = tm.write_model(
        root,
        "damaged",
        bytes(data),
        tm.config_text([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3])]),
    )
    with pytest.raises(InvalidArgument, match=r"model 'damaged'.*model.pt"):
        load(folder)


def test_missing_file(tm, root):
    folder = tm.write_model(
        root, "nofile", b"", tm.config_text([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3])])
    )
    (folder / "1" / "model.pt").unlink()
    with pytest.raises(
        Unavailable, match=r"model 'nofile': model file '.*model.pt' \(or 'model.pt2'\) does not exist"
    ):
        load(folder)


def test_config_with_more_inputs_than_forward_takes(tm, root):
    folder = tm.write_model(
        root,
        "extra",
        tm.script_bytes(tm.Affine()),
        tm.config_text([("INPUT__0", "FP32", [4]), ("INPUT__1", "FP32", [4])], [("OUTPUT__0", "FP32", [3])]),
    )
    with pytest.raises(
        InvalidArgument, match=r"forward\(x\) takes 1; inputs \['INPUT__1'\] have no argument"
    ):
        load(folder)


def test_config_that_leaves_a_required_argument_unfed(tm, root):
    folder = tm.write_model(
        root,
        "short",
        tm.script_bytes(tm.Mix()),
        tm.config_text([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [4])]),
    )
    with pytest.raises(InvalidArgument, match=r"forward\(x, y\) needs argument\(s\) \['y'\]"):
        load(folder)


def test_kind_gpu_without_cuda_fails_the_instance_clearly(tm, root, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = tm.write_model(
        root,
        "gpu",
        tm.script_bytes(tm.Affine()),
        tm.config_text([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3])]),
    )
    with pytest.raises(
        Unavailable, match=r"model 'gpu': instance group 'g' is KIND_GPU but torch .* sees no CUDA device"
    ):
        load(folder, kind="KIND_GPU")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("INFERENCE_MODE", "maybe", "parameter INFERENCE_MODE must be true or false, got 'maybe'"),
        (
            "INTRA_OP_THREAD_COUNT",
            "two",
            "parameter INTRA_OP_THREAD_COUNT must be a positive integer, got 'two'",
        ),
        ("INTER_OP_THREAD_COUNT", "0", "parameter INTER_OP_THREAD_COUNT must be a positive integer, got '0'"),
    ],
)
def test_bad_parameters(tm, root, key, value, expected):
    folder = tm.write_model(
        root,
        "params",
        tm.script_bytes(tm.Affine()),
        tm.config_text(
            [("INPUT__0", "FP32", [4])],
            [("OUTPUT__0", "FP32", [3])],
            extra=f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}',
        ),
    )
    with pytest.raises(InvalidArgument, match=expected):
        PyTorchBackend().load_model(ModelContext("params", 1, prepare_config(folder), folder, folder / "1"))


def test_thread_parameters_are_parsed(tm, root):
    folder = tm.write_model(
        root,
        "threads",
        tm.script_bytes(tm.Affine()),
        tm.config_text(
            [("INPUT__0", "FP32", [4])],
            [("OUTPUT__0", "FP32", [3])],
            extra='parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "3" } }',
        ),
    )
    settings = TorchSettings.from_context(
        ModelContext("threads", 1, prepare_config(folder), folder, folder / "1")
    )
    assert settings.threads == {"INTRA_OP_THREAD_COUNT": 3}
