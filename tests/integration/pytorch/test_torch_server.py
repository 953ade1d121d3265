"""PyTorch models behind a real server, over HTTP and gRPC, checked against torch run directly."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")


def _grpc_server_exists() -> bool:
    try:
        import nereid.server.grpc.server  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(params=["http", "grpc"])
def protocol(request, torch_server):
    """(client module, client) for each transport; gRPC is skipped until its front-end exists."""
    if request.param == "http":
        return httpclient, httpclient.InferenceServerClient(torch_server.http_url)
    if not _grpc_server_exists():
        pytest.skip("nereid.server.grpc.server is not importable yet")
    return grpcclient, grpcclient.InferenceServerClient(torch_server.grpc_url)


def infer(protocol, model: str, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    module, client = protocol
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    names = (
        [o["name"] for o in result.get_response()["outputs"]]
        if module is httpclient
        else [o.name for o in result.get_response().outputs]
    )
    return {name: result.as_numpy(name) for name in names}


def model_file(server, name: str, filename: str = "model.pt") -> Path:
    return Path(server.server.settings.model_repository[0]) / name / "1" / filename


def reference(path: Path, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same file run by torch directly."""
    module = torch.jit.load(str(path)) if path.suffix == ".pt" else torch.export.load(str(path)).module()
    with torch.inference_mode():
        result = module(*(torch.from_numpy(a) for a in arrays))
    return tuple(t.numpy() for t in (result if isinstance(result, tuple) else (result,)))


def test_indexed_inputs_and_outputs(protocol, torch_server, rng):
    x, y = rng.standard_normal((3, 4), dtype=np.float32), rng.standard_normal((3, 4), dtype=np.float32)
    got = infer(protocol, "mix_indexed", INPUT__0=x, INPUT__1=y)
    difference, blend = reference(model_file(torch_server, "mix_indexed"), x, y)
    np.testing.assert_array_equal(got["OUTPUT__0"], difference)
    np.testing.assert_array_equal(got["OUTPUT__1"], blend)


def test_inputs_by_forward_argument_name(protocol, torch_server, rng):
    x, y = rng.standard_normal((2, 4), dtype=np.float32), rng.standard_normal((2, 4), dtype=np.float32)
    got = infer(protocol, "mix_named", y=y, x=x)  # config lists y first; forward takes (x, y)
    difference, blend = reference(model_file(torch_server, "mix_named"), x, y)
    np.testing.assert_array_equal(got["difference"], difference)
    np.testing.assert_array_equal(got["blend"], blend)


def test_torch_export_program(protocol, torch_server, rng):
    x, y = rng.standard_normal((5, 4), dtype=np.float32), rng.standard_normal((5, 4), dtype=np.float32)
    got = infer(protocol, "mix_export", INPUT__0=x, INPUT__1=y)
    difference, blend = reference(model_file(torch_server, "mix_export", "model.pt2"), x, y)
    np.testing.assert_array_equal(got["OUTPUT__0"], difference)
    np.testing.assert_array_equal(got["OUTPUT__1"], blend)


def test_example_torch_linear(protocol, torch_server, rng):
    x = rng.standard_normal((8, 4), dtype=np.float32)
    got = infer(protocol, "torch_linear", INPUT__0=x)
    (expected,) = reference(model_file(torch_server, "torch_linear"), x)
    assert got["OUTPUT__0"].shape == (8, 2)
    np.testing.assert_array_equal(got["OUTPUT__0"], expected)


def test_metadata_and_config(torch_server):
    client = httpclient.InferenceServerClient(torch_server.http_url)
    metadata = client.get_model_metadata("torch_linear")
    assert metadata["platform"] == "pytorch_libtorch"
    assert metadata["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 2]}]
    config = client.get_model_config("mix_export")
    assert config["platform"] == "torch_aoti" and config["default_model_filename"] == "model.pt2"


def test_concurrent_requests_are_batched_and_each_client_gets_its_rows(torch_server):
    """affine waits up to 50 ms to fill a batch; 12 clients at once must share executions."""
    url = torch_server.http_url
    before = httpclient.InferenceServerClient(url).get_inference_statistics("affine")["model_stats"][0]
    inputs = [
        np.full((1 + i % 2, 4), float(i), dtype=np.float32) + np.arange(4, dtype=np.float32)
        for i in range(12)
    ]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(inputs))

    def client(i: int) -> None:
        try:
            connection = httpclient.InferenceServerClient(url)
            tensor = httpclient.InferInput("INPUT__0", list(inputs[i].shape), "FP32")
            tensor.set_data_from_numpy(inputs[i])
            start.wait(10)
            results[i] = connection.infer("affine", [tensor]).as_numpy("OUTPUT__0")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    path = model_file(torch_server, "affine")
    for i, x in enumerate(inputs):
        (expected,) = reference(path, x)
        np.testing.assert_allclose(results[i], expected, rtol=1e-6, atol=1e-6)
    after = httpclient.InferenceServerClient(url).get_inference_statistics("affine")["model_stats"][0]
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == len(inputs)
    assert executions < requests, (executions, requests)


def test_wrong_shape_is_refused_before_the_model(protocol):
    module, client = protocol
    tensor = module.InferInput("INPUT__0", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 5), np.float32))
    with pytest.raises(InferenceServerException, match="unexpected shape for input 'INPUT__0'"):
        client.infer("torch_linear", [tensor])


# ---------------------------------------------------------------------------------------------
# Models that cannot load


def test_bad_models_fail_to_load_with_messages_that_say_why(tm, repo, start_server):
    io4 = ([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3])])
    tm.write_model(repo.root, "good", tm.script_bytes(tm.Affine()), tm.config_text(*io4))
    tm.write_model(repo.root, "garbage", b"\x89PNG not a model", tm.config_text(*io4))
    import io

    buffer = io.BytesIO()
    torch.save(tm.Affine().state_dict(), buffer)
    tm.write_model(repo.root, "checkpoint", buffer.getvalue(), tm.config_text(*io4))
    tm.write_model(repo.root, "no_io", tm.script_bytes(tm.Affine()), 'platform: "pytorch_libtorch"\n')
    tm.write_model(
        repo.root,
        "strings",
        tm.script_bytes(tm.Affine()),
        tm.config_text([("INPUT__0", "STRING", [1])], [("OUTPUT__0", "FP32", [3])]),
    )
    tm.write_model(
        repo.root,
        "too_many",
        tm.script_bytes(tm.Affine()),
        tm.config_text([("INPUT__0", "FP32", [4]), ("INPUT__1", "FP32", [4])], [("OUTPUT__0", "FP32", [3])]),
    )
    plan = repo.root / "engine"
    (plan / "1").mkdir(parents=True)
    (plan / "1" / "model.plan").write_bytes(b"not an engine")
    (plan / "config.pbtxt").write_text(
        'platform: "tensorrt_plan"\nmax_batch_size: 1\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\noutput [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )

    running = start_server(repo.root, exit_on_error=False)
    client = httpclient.InferenceServerClient(running.http_url)
    reasons = {row["name"]: row.get("reason", "") for row in client.get_model_repository_index()}
    assert client.is_model_ready("good")
    expectations = {
        "garbage": ["model 'garbage'", "model.pt", "is not a TorchScript or torch.export archive"],
        "checkpoint": ["model 'checkpoint'", "is a torch.save() checkpoint"],
        "no_io": ["model 'no_io' lists no 'input' and no 'output'", "cannot auto-complete", "INPUT__0"],
        "strings": ["input 'INPUT__0' is TYPE_STRING (BYTES)", "does not support"],
        "too_many": ["forward(x) takes 1", "'INPUT__1'"],
        "engine": ["TensorRT backend needs CUDA and the tensorrt package: pip install .[gpu]"],
    }
    for name, phrases in expectations.items():
        assert not client.is_model_ready(name), name
        for phrase in phrases:
            assert phrase in reasons[name], (name, reasons[name])
