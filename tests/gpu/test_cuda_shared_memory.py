"""Triton's CUDA shared memory extension with NVIDIA's tritonclient helpers, over HTTP and gRPC.

The client allocates device memory with ``tritonclient.utils.cuda_shared_memory`` (cuda-python)
and registers its IPC handle; the server opens it through the driver API. A CUDA IPC handle
cannot be opened by the process that made it, so the server here is a ``nereid serve``
subprocess, not the in-process test server. The model is add_sub (FP32 [1, 16]: 64 bytes).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pytest

NEREID = shutil.which("nereid") or str(Path(sys.executable).with_name("nereid"))
TENSOR = 64


def cudashm() -> Any:
    """tritonclient's CUDA helpers (they import ``pkg_resources``, gone from setuptools 81+)."""
    if importlib.util.find_spec("pkg_resources") is None:
        stand_in = types.ModuleType("pkg_resources")
        stand_in.resource_filename = lambda package, name: str(files(package) / name)  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stand_in
    try:
        import tritonclient.utils.cuda_shared_memory as helpers
    except Exception as error:  # cuda-python missing: the helpers raise at import
        pytest.skip(f"tritonclient's CUDA shared memory helpers do not import: {error}")
    return helpers


@pytest.fixture(scope="module")
def server(module_repo: Any) -> Iterator[tuple[str, str]]:
    """(http url, grpc url) of a ``nereid serve --allow-client-shm`` subprocess serving add_sub."""
    module_repo.add_sub()
    root = module_repo.root
    args = [
        "serve",
        "--model-repository",
        str(root),
        "--allow-client-shm=true",
        "--http-address",
        "127.0.0.1",
    ]
    args += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    process = subprocess.Popen([NEREID, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen, ports = "", {}
        deadline = time.monotonic() + 120
        assert process.stdout is not None
        while len(ports) < 2 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            seen += line
            ports.update(re.findall(r"started (http|grpc) service at [\d.]+:(\d+)", line))
        assert len(ports) == 2, f"server did not start:\n{seen}"
        yield f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}"
    finally:
        process.terminate()
        process.wait(timeout=60)


def clients(server: tuple[str, str], transport: str) -> tuple[Any, Any]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module = httpclient if transport == "http" else grpcclient
    url = server[0] if transport == "http" else server[1]
    return module, module.InferenceServerClient(url)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_add_sub_through_cuda_regions(server: tuple[str, str], transport: str) -> None:
    from tritonclient.utils import InferenceServerException

    helpers = cudashm()
    module, client = clients(server, transport)
    metadata = client.get_server_metadata()
    extensions = metadata["extensions"] if isinstance(metadata, dict) else list(metadata.extensions)
    assert "cuda_shared_memory" in extensions
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.full((1, 16), 2, dtype=np.float32)
    inputs_region = helpers.create_shared_memory_region(f"in_{transport}", 2 * TENSOR, 0)
    outputs_region = helpers.create_shared_memory_region(f"out_{transport}", 2 * TENSOR, 0)
    try:
        helpers.set_shared_memory_region(inputs_region, [a, b])
        client.register_cuda_shared_memory("in", helpers.get_raw_handle(inputs_region), 0, 2 * TENSOR)
        client.register_cuda_shared_memory("out", helpers.get_raw_handle(outputs_region), 0, 2 * TENSOR)
        status = client.get_cuda_shared_memory_status("in")
        if transport == "http":
            assert status == [{"name": "in", "device_id": 0, "byte_size": 2 * TENSOR}]
        else:
            assert status.regions["in"].byte_size == 2 * TENSOR

        inputs = [module.InferInput(f"INPUT{i}", [1, 16], "FP32") for i in range(2)]
        inputs[0].set_shared_memory("in", TENSOR)
        inputs[1].set_shared_memory("in", TENSOR, offset=TENSOR)
        outputs = [module.InferRequestedOutput(f"OUTPUT{i}") for i in range(2)]
        outputs[0].set_shared_memory("out", TENSOR)
        outputs[1].set_shared_memory("out", TENSOR, offset=TENSOR)
        result = client.infer("add_sub", inputs, outputs=outputs)
        assert result.get_output("OUTPUT0") is not None
        got = helpers.get_contents_as_numpy(outputs_region, np.float32, [2, 16])
        np.testing.assert_array_equal(got[0], (a + b)[0])
        np.testing.assert_array_equal(got[1], (a - b)[0])

        # A window past the region's end is refused, naming the region; nothing is copied.
        inputs[1].set_shared_memory("in", TENSOR, offset=TENSOR + 8)
        with pytest.raises(InferenceServerException, match="for shared memory region: 'in'"):
            client.infer("add_sub", inputs, outputs=outputs)
        with pytest.raises(InferenceServerException, match="'in' already in manager"):
            client.register_cuda_shared_memory("in", helpers.get_raw_handle(inputs_region), 0, TENSOR)
        assert client.is_server_ready()
    finally:
        client.unregister_cuda_shared_memory()
        helpers.destroy_shared_memory_region(inputs_region)
        helpers.destroy_shared_memory_region(outputs_region)
    after = client.get_cuda_shared_memory_status()
    assert (after == []) if transport == "http" else (len(after.regions) == 0)
