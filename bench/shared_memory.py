"""System shared memory vs binary tensors: one large FP32 input through an identity model.

Starts ``nereid serve --allow-client-shm=true`` with an ONNX identity model (FP32 ``[-1]``, no
batching; the model is built in a temporary repository so that only the transport differs),
then sends the same tensor one request at a time over HTTP and gRPC with tritonclient, each way:

* ``binary``: the tensor in the request (HTTP binary data extension / gRPC raw contents), the
  output back in the response;
* ``shm``: the client copies the tensor into a registered region and asks for the output in a
  second region; requests carry only the region parameters.

Reports requests per second, p50 and p99 latency and the shm / binary ratios.

    .venv/bin/python bench/shared_memory.py --size-mib 4 --requests 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from harness import Nereid, render, uptime
from onnx import TensorProto, helper


def identity_repository(root: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "identity" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "identity" / "1" / "model.onnx"))
    (root / "identity" / "config.pbtxt").write_text(
        'name: "identity"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
    )


def binary_call(lib: Any, client: Any, data: np.ndarray) -> Callable[[], np.ndarray]:
    def call() -> np.ndarray:
        tensor = lib.InferInput("INPUT0", list(data.shape), "FP32")
        if lib is httpclient:
            tensor.set_data_from_numpy(data, binary_data=True)
            outputs = [lib.InferRequestedOutput("OUTPUT0", binary_data=True)]
        else:
            tensor.set_data_from_numpy(data)
            outputs = [lib.InferRequestedOutput("OUTPUT0")]
        return client.infer("identity", [tensor], outputs=outputs).as_numpy("OUTPUT0")

    return call


def shm_call(lib: Any, client: Any, data: np.ndarray, regions: list[Any]) -> Callable[[], np.ndarray]:
    names = []
    for _ in range(2):
        region = shared_memory.SharedMemory(
            f"nereid_bench_{uuid.uuid4().hex[:8]}", create=True, size=data.nbytes
        )
        regions.append(region)
        names.append(region.name)
        client.register_system_shared_memory(region.name, "/" + region.name, data.nbytes)
    source = np.ndarray(data.shape, np.float32, regions[-2].buf)
    result = np.ndarray(data.shape, np.float32, regions[-1].buf)

    def call() -> np.ndarray:
        source[:] = data  # the client's copy into the region is part of the cost
        tensor = lib.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_shared_memory(names[0], data.nbytes)
        output = lib.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory(names[1], data.nbytes)
        client.infer("identity", [tensor], outputs=[output])
        return result

    return call


def run(call: Callable[[], np.ndarray], data: np.ndarray, requests: int) -> tuple[float, float, float]:
    """(requests per second, p50 ms, p99 ms), after a short warm-up that also checks the answer."""
    for _ in range(3):
        np.testing.assert_array_equal(call(), data)
    latencies = []
    start = time.perf_counter()
    for _ in range(requests):
        begin = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return requests / elapsed, statistics.median(latencies) * 1e3, p99 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=float, default=4.0, help="input size in MiB (FP32)")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per transport and mode")
    args = parser.parse_args()
    data = np.random.default_rng(0).random(int(args.size_mib * 2**20) // 4, dtype=np.float32)
    print(f"before: {uptime()}")
    with tempfile.TemporaryDirectory() as tmp:
        identity_repository(Path(tmp))
        server = Nereid(["identity"], repository=Path(tmp), extra=["--allow-client-shm=true"])
        regions: list[Any] = []
        rows = []
        try:
            server.wait_ready()
            for protocol, lib in (("http", httpclient), ("grpc", grpcclient)):
                client = lib.InferenceServerClient(server.target(protocol))
                measured = {
                    "binary": run(binary_call(lib, client, data), data, args.requests),
                    "shm": run(shm_call(lib, client, data, regions), data, args.requests),
                }
                client.unregister_system_shared_memory()
                for mode, (rps, p50, p99) in measured.items():
                    rows.append([protocol, mode, f"{rps:.1f}", f"{p50:.2f}", f"{p99:.2f}", ""])
                b, s = measured["binary"], measured["shm"]
                rows[-1][-1] = f"{s[0] / b[0]:.2f}x infer/s, {b[1] / s[1]:.2f}x p50"
        finally:
            server.stop()
            for region in regions:
                region.close()
                region.unlink()
    print(f"{args.size_mib:g} MiB FP32 input, concurrency 1, {args.requests} requests each")
    print(render(["transport", "mode", "infer/s", "p50 ms", "p99 ms", "shm vs binary"], rows))
    print(f"after: {uptime()}")


if __name__ == "__main__":
    main()
