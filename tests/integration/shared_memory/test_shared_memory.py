"""System shared memory through NVIDIA's tritonclient, over HTTP and gRPC, for the same cases.

Regions are made with ``tritonclient.utils.shared_memory`` as a user makes them; the model is
add_sub (FP32 [1, 16]: 64 bytes a tensor). After every refusal the server still answers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

TENSOR = 64  # bytes of one FP32 [1, 16] tensor
TRANSPORTS = ["http", "grpc"]


@pytest.fixture(scope="module")
def served(module_repo, start_module_server):
    module_repo.add_sub()
    return start_module_server(module_repo.root, allow_client_shm=True)


class Regions:
    """Shared memory objects made by the test; destroyed (and unregistered) at the end."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.handles: list[Any] = []

    def make(self, byte_size: int, register: bool = True, offset: int = 0) -> tuple[str, str, Any]:
        name = f"r{uuid.uuid4().hex[:8]}"
        key = f"/nereid_test_{name}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        self.handles.append(handle)
        if register:
            self.client.register_system_shared_memory(name, key, byte_size - offset, offset=offset)
        return name, key, handle

    def close(self) -> None:
        self.client.unregister_system_shared_memory()
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture(params=TRANSPORTS)
def transport(request) -> str:
    return request.param


@pytest.fixture
def client(served, transport):
    module = httpclient if transport == "http" else grpcclient
    url = served.http_url if transport == "http" else served.grpc_url
    return module.InferenceServerClient(url)


@pytest.fixture
def regions(client) -> Iterator[Regions]:
    made = Regions(client)
    yield made
    made.close()


def lib(client: Any) -> Any:
    return httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((1, 16), dtype=np.float32), rng.random((1, 16), dtype=np.float32)


def still_serves(client: Any) -> None:
    a, b = data(9)
    m = lib(client)
    inputs = [m.InferInput("INPUT0", [1, 16], "FP32"), m.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    np.testing.assert_allclose(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a + b)


def shm_infer(client: Any, inputs: list[tuple[str, int, int]], outputs: list[tuple[str, int, int]]) -> Any:
    """Infer add_sub with each input and output in (region, byte_size, offset)."""
    m = lib(client)
    tensors = []
    for index, (region, size, offset) in enumerate(inputs):
        tensor = m.InferInput(f"INPUT{index}", [1, 16], "FP32")
        tensor.set_shared_memory(region, size, offset)
        tensors.append(tensor)
    wanted = []
    for index, (region, size, offset) in enumerate(outputs):
        output = m.InferRequestedOutput(f"OUTPUT{index}")
        output.set_shared_memory(region, size, offset)
        wanted.append(output)
    return client.infer("add_sub", tensors, outputs=wanted or None)


def test_inputs_and_outputs_in_regions(client, regions):
    a, b = data()
    ins, _, in_handle = regions.make(2 * TENSOR)
    outs, _, out_handle = regions.make(2 * TENSOR)
    shm.set_shared_memory_region(in_handle, [a, b])
    result = shm_infer(
        client, [(ins, TENSOR, 0), (ins, TENSOR, TENSOR)], [(outs, TENSOR, 0), (outs, TENSOR, TENSOR)]
    )
    np.testing.assert_allclose(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16]), a + b)
    np.testing.assert_allclose(
        shm.get_contents_as_numpy(out_handle, np.float32, [1, 16], offset=TENSOR), a - b
    )
    output = result.get_output("OUTPUT1")
    if isinstance(output, dict):  # HTTP: the region's parameters instead of data
        assert "data" not in output
        assert output["parameters"] == {
            "shared_memory_region": outs,
            "shared_memory_byte_size": TENSOR,
            "shared_memory_offset": TENSOR,
        }
    else:
        assert output.parameters["shared_memory_region"].string_param == outs
        assert output.parameters["shared_memory_byte_size"].int64_param == TENSOR
        assert output.parameters["shared_memory_offset"].int64_param == TENSOR


def test_shared_and_regular_tensors_mix(client, regions):
    ins, _, in_handle = regions.make(TENSOR)
    outs, _, out_handle = regions.make(TENSOR)
    m = lib(client)
    # HTTP: the regular tensors both as binary data and as JSON; gRPC has one encoding.
    for binary in (True, False) if m is httpclient else (True,):
        a, b = data(int(binary))
        shm.set_shared_memory_region(in_handle, [a])
        first, second = m.InferInput("INPUT0", [1, 16], "FP32"), m.InferInput("INPUT1", [1, 16], "FP32")
        first.set_shared_memory(ins, TENSOR)
        if m is httpclient:
            second.set_data_from_numpy(b, binary_data=binary)
            out0, out1 = (
                m.InferRequestedOutput("OUTPUT0"),
                m.InferRequestedOutput("OUTPUT1", binary_data=binary),
            )
        else:
            second.set_data_from_numpy(b)
            out0, out1 = m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")
        out0.set_shared_memory(outs, TENSOR)
        result = client.infer("add_sub", [first, second], outputs=[out0, out1])
        np.testing.assert_allclose(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16]), a + b)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def test_grpc_streams_use_regions_too(served):
    client = grpcclient.InferenceServerClient(served.grpc_url)
    made = Regions(client)
    try:
        a, b = data(3)
        ins, _, in_handle = made.make(2 * TENSOR)
        outs, _, out_handle = made.make(TENSOR)
        shm.set_shared_memory_region(in_handle, [a, b])
        answers: list[Any] = []
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        tensors = [grpcclient.InferInput(f"INPUT{i}", [1, 16], "FP32") for i in range(2)]
        tensors[0].set_shared_memory(ins, TENSOR)
        tensors[1].set_shared_memory(ins, TENSOR, TENSOR)
        output = grpcclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory(outs, TENSOR)
        client.async_stream_infer("add_sub", tensors, outputs=[output])
        client.stop_stream()
        assert len(answers) == 1 and answers[0][1] is None
        np.testing.assert_allclose(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16]), a + b)
    finally:
        made.close()


def _status(client: Any, name: str = "") -> dict[str, tuple[str, int, int]]:
    if isinstance(client, httpclient.InferenceServerClient):
        rows = client.get_system_shared_memory_status(name)
        return {r["name"]: (r["key"], r["offset"], r["byte_size"]) for r in rows}
    regions = client.get_system_shared_memory_status(name).regions
    return {n: (r.key, r.offset, r.byte_size) for n, r in regions.items()}


def test_status_lists_regions_and_unregister_removes_them(client, regions):
    first, first_key, _ = regions.make(2 * TENSOR)
    second, second_key, _ = regions.make(3 * TENSOR, offset=TENSOR)
    listed = _status(client)
    assert listed[first] == (first_key, 0, 2 * TENSOR)
    assert listed[second] == (second_key, TENSOR, 2 * TENSOR)
    assert _status(client, second) == {second: (second_key, TENSOR, 2 * TENSOR)}
    client.unregister_system_shared_memory(first)
    assert first not in _status(client) and second in _status(client)
    client.unregister_system_shared_memory("never-registered")  # as Triton: not an error
    with pytest.raises(
        InferenceServerException, match=f"Unable to find system shared memory region: '{first}'"
    ):
        _status(client, first)
    client.unregister_system_shared_memory()
    assert _status(client) == {}
    still_serves(client)


def test_bad_registrations_are_refused(client, regions):
    name, _, _ = regions.make(TENSOR)
    _, spare_key, _ = regions.make(TENSOR, register=False)
    cases = [
        ("already in manager", name, spare_key, TENSOR, 0),
        ("'/../../etc/passwd' is not a shared memory name", "t1", "/../../etc/passwd", 8, 0),
        ("'/dev/shm/x' is not a shared memory name", "t2", "/dev/shm/x", 8, 0),
        ("reserved prefix", "t3", "/triton_python_backend_shm_region_1", 8, 0),
        ("Unable to open shared memory region: '/nereid_no_such'", "t4", "/nereid_no_such", 8, 0),
        ("'t5': invalid args", "t5", spare_key, TENSOR + 1, 0),
        ("'t6': invalid args", "t6", spare_key, 8, TENSOR - 4),
    ]
    for message, region, region_key, size, offset in cases:
        with pytest.raises(InferenceServerException, match=message):
            client.register_system_shared_memory(region, region_key, size, offset=offset)
    assert set(_status(client)) == {name}
    still_serves(client)


def test_out_of_window_tensors_are_refused_by_name(client, regions):
    ins, _, in_handle = regions.make(2 * TENSOR)
    outs, _, _ = regions.make(TENSOR)
    shm.set_shared_memory_region(in_handle, list(data()))
    good = (ins, TENSOR, 0)
    cases = [
        (f"Invalid offset for shared memory region: '{ins}'", [good, (ins, TENSOR, 2 * TENSOR)], []),
        (
            f"Invalid offset \\+ byte size for shared memory region: '{ins}'",
            [good, (ins, TENSOR, TENSOR + 4)],
            [],
        ),
        (f"Invalid offset \\+ byte size for shared memory region: '{ins}'", [good, (ins, 2**62, 4)], []),
        ("Unable to find shared memory region: 'nope'", [good, ("nope", TENSOR, 0)], []),
        (f"Invalid offset for shared memory region: '{outs}'", [good, good], [(outs, TENSOR, TENSOR)]),
        (
            f"output 'OUTPUT0' \\({TENSOR - 4} bytes\\).*region '{outs}'",
            [good, good],
            [(outs, TENSOR - 4, 0)],
        ),
    ]
    for message, inputs, outputs in cases:
        with pytest.raises(InferenceServerException, match=message):
            shm_infer(client, inputs, outputs)
        still_serves(client)


def test_a_truncated_backing_object_fails_the_request_not_the_server(client, regions):
    ins, key, in_handle = regions.make(2 * TENSOR)
    outs, out_key, _ = regions.make(TENSOR)
    shm.set_shared_memory_region(in_handle, list(data()))
    os.truncate(f"/dev/shm{key}", TENSOR)
    with pytest.raises(InferenceServerException, match=f"'{ins}'.*truncated"):
        shm_infer(client, [(ins, TENSOR, 0), (ins, TENSOR, TENSOR)], [])
    os.truncate(f"/dev/shm{out_key}", 0)
    with pytest.raises(InferenceServerException, match=f"'{outs}'.*truncated"):
        shm_infer(client, [(ins, TENSOR, 0), (ins, TENSOR, 0)], [(outs, TENSOR, 0)])
    assert os.stat(f"/dev/shm{out_key}").st_size == 0  # nothing was written past the end
    still_serves(client)


def test_cuda_shared_memory_is_refused_and_lists_nothing(client):
    if isinstance(client, httpclient.InferenceServerClient):
        assert client.get_cuda_shared_memory_status() == []
    else:
        assert len(client.get_cuda_shared_memory_status().regions) == 0
    with pytest.raises(InferenceServerException, match="'gpu0', GPUs not supported"):
        client.register_cuda_shared_memory("gpu0", b"\x00" * 64, 0, 1024)
    with pytest.raises(InferenceServerException, match="Unable to find cuda shared memory region: 'gpu0'"):
        client.get_cuda_shared_memory_status("gpu0")
    client.unregister_cuda_shared_memory()
    still_serves(client)


def test_extensions_name_system_shared_memory(client):
    metadata = client.get_server_metadata()
    extensions = metadata["extensions"] if isinstance(metadata, dict) else list(metadata.extensions)
    assert "system_shared_memory" in extensions and "cuda_shared_memory" not in extensions
