"""Response cache: hit latency against miss latency (and an uncached twin), over HTTP and gRPC.

    python bench/response_cache.py [--requests N] [--width W] [--layers L] [--json out.json]

Writes two copies of an ONNX MLP (``L`` MatMul+Relu layers of ``W x W``, FP32 input ``[1, W]``)
into a temporary repository: ``mlp_cached`` with ``response_cache { enable: true }`` and
``mlp_plain`` without. Starts ``nereid serve --cache-config local,size=64MiB`` and sends, one at
a time with tritonclient (c=1):

* **miss**: ``N`` requests to ``mlp_cached``, each with fresh random input (lookup, execute, insert);
* **hit**: ``N`` copies of one request already cached (lookup only, no queue, no execute);
* **uncached**: the miss inputs again, to ``mlp_plain`` (no cache code on the path).

Reports p50 / p99 client latency per case and ``miss p50 / hit p50``. The statistics extension's
``cache_hit`` / ``cache_miss`` counts are checked against what was sent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Nereid, render, uptime

CACHE_BYTES = 64 * 1024 * 1024


def write_mlp(root: Path, name: str, width: int, layers: int, cache: bool) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "INPUT0"
    for i in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"W{i}"))
        out = "OUTPUT0" if i == layers - 1 else f"H{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"W{i}"], [f"M{i}"]))
        nodes.append(helper.make_node("Relu", [f"M{i}"], [out]))
        previous = out
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width])  # noqa: E731
    graph = helper.make_graph(nodes, name, [io("INPUT0")], [io("OUTPUT0")], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / name / "1").mkdir(parents=True)
    onnx.save(model, str(root / name / "1" / "model.onnx"))
    (root / name / "config.pbtxt").write_text(
        f"""platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {width} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {width} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{"response_cache { enable: true }" if cache else ""}
"""
    )


def timed(client: Any, module: Any, model: str, inputs: list[np.ndarray]) -> list[float]:
    """Latency in µs of each request, sent one after another."""
    out = []
    for data in inputs:
        tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        start = time.perf_counter()
        client.infer(model, [tensor])
        out.append((time.perf_counter() - start) * 1e6)
    return out


def run_protocol(server: Nereid, protocol: str, n: int, width: int) -> dict[str, list[float]]:
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module  # type: ignore[no-redef]
    client = module.InferenceServerClient(server.target(protocol))
    rng = np.random.default_rng(1 if protocol == "http" else 2)
    fresh = [rng.standard_normal((1, width)).astype(np.float32) for _ in range(n)]
    warm = [rng.standard_normal((1, width)).astype(np.float32) for _ in range(20)]
    timed(client, module, "mlp_plain", warm)  # connections, sessions, allocator
    timed(client, module, "mlp_cached", warm)
    one = fresh[0] + 1000.0
    timed(client, module, "mlp_cached", [one])  # the entry every hit reads
    results = {
        "miss": timed(client, module, "mlp_cached", fresh),
        "hit": timed(client, module, "mlp_cached", [one] * n),
        "uncached": timed(client, module, "mlp_plain", fresh),
    }
    client.close()
    return results


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per case and transport")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    before = uptime()
    with tempfile.TemporaryDirectory(prefix="nereid-cache-bench-") as tmp:
        root = Path(tmp)
        write_mlp(root, "mlp_cached", args.width, args.layers, cache=True)
        write_mlp(root, "mlp_plain", args.width, args.layers, cache=False)
        server = Nereid(["mlp_cached", "mlp_plain"], root, extra=[f"--cache-config=local,size={CACHE_BYTES}"])
        results: dict[str, dict[str, list[float]]] = {}
        try:
            server.wait_ready()
            for protocol in args.protocols.split(","):
                results[protocol] = run_protocol(server, protocol, args.requests, args.width)
            stats = server.get("/v2/models/mlp_cached/stats")["model_stats"][0]["inference_stats"]
        finally:
            server.stop()
    rows, summary = [], {}
    for protocol, cases in results.items():
        p50 = {case: percentile(v, 50) for case, v in cases.items()}
        for case, values in cases.items():
            rows.append([protocol, case, f"{p50[case]:.0f}", f"{percentile(values, 99):.0f}"])
        summary[protocol] = {
            "p50_us": p50,
            "p99_us": {c: percentile(v, 99) for c, v in cases.items()},
            "miss_over_hit": p50["miss"] / p50["hit"],
            "uncached_over_hit": p50["uncached"] / p50["hit"],
        }
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {args.layers} x MatMul {args.width}x{args.width} + Relu"
    )
    print(f"# before: {before}\n# after:  {uptime()}")
    print(render(["transport", "case", "p50 µs", "p99 µs"], rows))
    for protocol, s in summary.items():
        print(
            f"{protocol}: miss/hit p50 = {s['miss_over_hit']:.2f}x, uncached/hit p50 = {s['uncached_over_hit']:.2f}x"
        )
    print(f"statistics: cache_hit {stats['cache_hit']['count']}, cache_miss {stats['cache_miss']['count']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
