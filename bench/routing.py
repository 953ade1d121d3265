"""What version routing and shadow traffic add to the request path, measured in-process.

``python bench/routing.py`` builds a temporary repository of ONNX identity models (two
versions each), starts an :class:`InferenceCore` without front-ends and reports:

* ``route()`` per call for a model without a routing section (the pre-routing baseline is
  ``repository.latest``), with weights, with weights plus a sticky key, and under a canary;
* the primary's in-process ``infer`` latency with no shadow and with every request shadowed
  (the copy runs after the primary answered, so only scheduling it is on the primary's path).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from nereid.server.core import InferenceCore
from nereid.server.types import InferRequest, Tensor

ROUTING = {
    "plain": "",
    "weighted": "weights: {1: 95, 2: 5}",
    "sticky": "weights: {1: 95, 2: 5}\\nsticky: {parameter: user}",
    "canary": "canary: {stable: 1, candidate: 2, steps: [5, 25, 100], window_s: 3600}",
    "shadowed": "shadow: {version: 2}",
}


def write_repository(root: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for name, routing in ROUTING.items():
        for version in (1, 2):
            (root / name / str(version)).mkdir(parents=True)
            onnx.save(model, str(root / name / str(version) / "model.onnx"))
        param = (
            f'parameters {{ key: "nereid.routing" value: {{ string_value: "{routing}" }} }}'
            if routing
            else ""
        )
        (root / name / "config.pbtxt").write_text(
            f"""platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
version_policy: {{ all {{ }} }}
{param}
"""
        )


def per_call_ns(fn, n: int) -> float:
    """Best of 5 runs of ``n`` calls, in ns per call (the least disturbed on a shared machine)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


async def infer_latencies(core: InferenceCore, name: str, n: int, overlap: bool) -> list[float]:
    """Sequential primaries; ``overlap``: the next starts while the last one's shadow copy runs."""
    data = np.ones((1, 4), dtype=np.float32)
    out = []
    for _ in range(n):
        request = InferRequest(name, [Tensor("INPUT0", "FP32", (1, 4), data)])
        start = time.perf_counter_ns()
        await core.infer(request)
        out.append((time.perf_counter_ns() - start) / 1000)
        if overlap:
            await asyncio.sleep(0)  # the shadow copy is queued and runs beside the next primary
        else:
            await core.router.settle()  # the copy finishes first: only the path cost remains
    await core.router.settle()
    return out


async def main(calls: int, infers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_repository(root)
        core = InferenceCore([root])
        await core.start()
        data = np.ones((1, 4), dtype=np.float32)
        request = InferRequest("plain", [Tensor("INPUT0", "FP32", (1, 4), data)])
        baseline = per_call_ns(lambda: core.repository.latest("plain"), calls)
        print(f"{'case':<34} {'ns/call':>8} {'added vs latest()':>18}")
        print(f"{'repository.latest (old route body)':<34} {baseline:8.0f} {'-':>18}")
        for name in ("plain", "weighted", "sticky", "canary"):
            request = InferRequest(name, [], parameters={"user": "alice"} if name == "sticky" else {})
            cost = per_call_ns(lambda r=request: core.route(r), calls)
            print(f"{'route() ' + name:<34} {cost:8.0f} {cost - baseline:18.0f}")
        print()
        print(f"{'in-process infer, primary':<34} {'p50 us':>8} {'mean us':>8} {'p99 us':>8}")
        cases = (("plain", False), ("shadowed", False), ("shadowed", True), ("plain", False))
        for name, overlap in cases:
            await infer_latencies(core, name, 200, overlap)  # warm-up
            lat = sorted(await infer_latencies(core, name, infers, overlap))
            p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            label = name + (", copy runs beside next" if overlap else "")
            print(f"{label:<34} {statistics.median(lat):8.1f} {statistics.fmean(lat):8.1f} {p99:8.1f}")
        # The request path's own share: observe() schedules the copy and returns.
        response = await core.infer(InferRequest("shadowed", [Tensor("INPUT0", "FP32", (1, 4), data)]))
        print(f"\n{'router.observe()':<34} {'ns/call':>8}")
        for name in ("plain", "shadowed"):
            request = InferRequest(name, [Tensor("INPUT0", "FP32", (1, 4), data)])
            target = core.repository.version(name, "1")
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter_ns()
                for _ in range(2000):
                    core.router.observe(target, request, True, 100_000, response)
                best = min(best, (time.perf_counter_ns() - start) / 2000)
                await core.router.settle()
            print(f"{name:<34} {best:8.0f}")
        shadow = core.routing_state("shadowed")["shadow"]
        print(f"\nshadow comparisons: {shadow}")
        await core.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="route() calls per case and run")
    parser.add_argument("--infers", type=int, default=3000, help="in-process infer calls per case")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.infers))
