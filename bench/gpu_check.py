"""GPU check for Nereid: the same MLP on every engine path, served, compared and timed.

Run by ``bench/gpu_check.sh`` (which installs what is missing first); usable alone::

    python bench/gpu_check.py env                 # what this machine has
    python bench/gpu_check.py deps                # pip requirements still missing, one per line
    python bench/gpu_check.py run --budget 200    # build, serve, compare, time; report to $OUT

``run`` builds one MLP (256 -> 1024 -> 1024 -> 16, ReLU, fixed seed) as ONNX, as a TensorRT plan
(built here with the TensorRT builder API), as TorchScript and as a torch.export program, and
serves these variants from one Nereid server::

    onnx_cpu        onnxruntime, KIND_CPU                 (the reference path)
    onnx_cuda       onnxruntime, CUDA provider, KIND_GPU
    onnx_trt_ep     onnxruntime, TensorRT accelerator, KIND_GPU
    trt_plan        TensorRT backend, model.plan, KIND_GPU
    torch_cpu       PyTorch backend, TorchScript, KIND_CPU
    torch_cuda      PyTorch backend, TorchScript, KIND_GPU
    torch_export_cuda  PyTorch backend, torch.export .pt2, KIND_GPU

A variant whose prerequisites are missing is skipped with the reason; one that fails to
build, load or answer is reported and the rest go on. Outputs are compared with a float64
numpy reference and with ``onnx_cpu``; latency is measured over HTTP (binary tensors) for
batch 1 and 32 sequentially and for batch 1 from 8 concurrent clients (dynamic batching).
Every step is bounded by ``--budget`` seconds in total. The report is printed and written to
``$OUT/gpu_check_report.txt`` and ``.json`` (``bench/out/gpu_check`` without ``$OUT``).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (256, 1024, 1024, 16)
MAX_BATCH = 64
SEED = 0

# import name -> pip requirement, for what the server, the tests and this script need.
SERVER_MODULES = {
    "uvicorn": "uvicorn",
    "httptools": "httptools",
    "orjson": "orjson",
    "yaml": "pyyaml",
    "prometheus_client": "prometheus-client",
    "grpc": "grpcio",
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "pytest": "pytest",
    "rapidjson": "python-rapidjson",
    "tritonclient": "tritonclient",
    "geventhttpclient": "geventhttpclient",
    "gevent": "gevent",
}


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class Report:
    started: float = field(default_factory=time.time)
    environment: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        entry: dict[str, Any] = {"step": name, "status": "ok"}
        start = time.perf_counter()
        print(f"--- {name}", flush=True)
        try:
            yield entry
        except Skip as exc:
            entry["status"] = f"skipped: {exc}"
        except Exception as exc:
            entry["status"] = f"FAILED: {type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=6)
        except BaseException:
            entry["status"] = "INTERRUPTED"
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - start, 2)
            self.steps.append(entry)
            print(f"    {entry['status']} ({entry['seconds']} s)", flush=True)

    def text(self) -> str:
        lines = ["Nereid GPU check", "=" * 16, ""]
        for key, value in self.environment.items():
            lines.append(f"{key:>22}: {value}")
        lines += ["", "Steps", "-----"]
        lines += [f"  {s['step']:<44} {s['status']} ({s['seconds']} s)" for s in self.steps]
        if self.models:
            lines += ["", "Models (server repository index)", "--------------------------------"]
            lines += [
                f"  {n:<20} {m['state']:<12} {m.get('reason', '')[:200]}"
                for n, m in sorted(self.models.items())
            ]
        if self.accuracy:
            lines += ["", "Accuracy (max |diff|; batch of 32)", "---------------------------------"]
            lines.append(f"  {'variant':<20} {'vs float64':>12} {'vs onnx_cpu':>12}  verdict")
            for name, a in self.accuracy.items():
                lines.append(
                    f"  {name:<20} {a['vs_reference']:>12.3g} {a['vs_onnx_cpu']:>12.3g}  {a['verdict']}"
                )
        if self.latency:
            lines += [
                "",
                "Latency over HTTP (ms; p50 / p99) and throughput",
                "------------------------------------------------",
            ]
            lines.append(f"  {'variant':<20} {'batch 1':>17} {'batch 32':>17} {'8 clients x b1':>22}")
            for name, lat in self.latency.items():
                lines.append(
                    f"  {name:<20} {_cell(lat.get('b1')):>17} {_cell(lat.get('b32')):>17} {_conc(lat.get('c8')):>22}"
                )
        lines += ["", f"total {time.time() - self.started:.0f} s"]
        return "\n".join(lines)


def _cell(stats: dict[str, Any] | None) -> str:
    return f"{stats['p50']:.2f} / {stats['p99']:.2f}" if stats else "-"


def _conc(stats: dict[str, Any] | None) -> str:
    return f"{stats['rows_per_s']:.0f} rows/s p50 {stats['p50']:.1f}" if stats else "-"


class Skip(Exception):
    """A step that cannot run here (missing package or device), not a failure."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, need: float, what: str) -> None:
        if self.left() < need:
            raise Skip(f"out of time budget before {what}")


# ---------------------------------------------------------------------------------------------
# Environment and dependencies


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    with contextlib.suppress(Exception):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        env["nvidia-smi"] = smi.stdout.strip() or smi.stderr.strip()
    try:
        import torch

        env["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
        env["cuda device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception as exc:
        env["torch"] = f"unavailable: {exc}"
    try:
        import onnxruntime as ort

        env["onnxruntime"] = f"{ort.__version__}; providers {ort.get_available_providers()}"
    except Exception as exc:
        env["onnxruntime"] = f"unavailable: {exc}"
    try:
        import tensorrt as trt

        env["tensorrt"] = trt.__version__
    except Exception as exc:
        env["tensorrt"] = f"unavailable: {type(exc).__name__}: {exc}"
    try:
        import google.protobuf

        env["protobuf"] = google.protobuf.__version__
    except Exception as exc:
        env["protobuf"] = f"unavailable: {exc}"
    return env


def missing_requirements() -> list[str]:
    """pip requirements to install: server/test modules, protobuf >= 7, tensorrt, onnxruntime-gpu."""
    missing = [req for module, req in SERVER_MODULES.items() if not _importable(module)]
    with contextlib.suppress(Exception):
        import google.protobuf

        if int(google.protobuf.__version__.split(".")[0]) < 7:
            missing.append("protobuf>=7.35.1")  # nereid's generated protos need the 7.x runtime
    cuda_major = ""
    with contextlib.suppress(Exception):
        import torch

        cuda_major = (torch.version.cuda or "").split(".")[0]
    if cuda_major and not _importable("tensorrt"):
        missing += [
            f"tensorrt-cu{cuda_major}",
            f"tensorrt-cu{cuda_major}-libs",
            f"tensorrt-cu{cuda_major}-bindings",
        ]
    if cuda_major:
        try:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                missing.append("onnxruntime-gpu")
        except Exception:
            missing.append("onnxruntime-gpu")
    return missing


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Models


def weights() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(SEED)
    layers = []
    for fan_in, fan_out in itertools.pairwise(LAYERS):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        layers.append((w, b))
    return layers


def reference(x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    layers = weights()
    for i, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float64) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def onnx_bytes() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, current = [], [], "INPUT0"
    layers = weights()
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 1
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], ["OUTPUT0" if last else f"a{i}"]),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", LAYERS[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", LAYERS[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def torch_module() -> Any:
    import torch

    layers: list[Any] = []
    mlp = weights()
    for i, (w, b) in enumerate(mlp):
        linear = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i < len(mlp) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def tensorrt_plan(onnx: bytes) -> bytes:
    """Build with the TensorRT builder API: explicit batch, dim 0 in 1..MAX_BATCH (TRT 8.6 - 11)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    profile = builder.create_optimization_profile()
    profile.set_shape("INPUT0", (1, LAYERS[0]), (8, LAYERS[0]), (MAX_BATCH, LAYERS[0]))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("build_serialized_network returned None")
    return bytes(plan)


def config_text(
    platform_name: str, kind: str, torch_names: bool = False, extra: str = "", filename: str = ""
) -> str:
    i, o = ("INPUT__0", "OUTPUT__0") if torch_names else ("INPUT0", "OUTPUT0")
    lines = [
        f'platform: "{platform_name}"',
        f"max_batch_size: {MAX_BATCH}",
        f'input [ {{ name: "{i}" data_type: TYPE_FP32 dims: [ {LAYERS[0]} ] }} ]',
        f'output [ {{ name: "{o}" data_type: TYPE_FP32 dims: [ {LAYERS[-1]} ] }} ]',
        f"instance_group [ {{ count: 1 kind: {kind} }} ]",
        "dynamic_batching { max_queue_delay_microseconds: 500 }",
        extra,
    ]
    if filename:
        lines.append(f'default_model_filename: "{filename}"')
    return "\n".join(lines) + "\n"


def write(repo: Path, name: str, filename: str, data: bytes, config: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / filename).write_bytes(data)
    (repo / name / "config.pbtxt").write_text(config)


def build_repository(repo: Path, report: Report, deadline: Deadline) -> dict[str, str]:
    """Write every variant this machine can run; returns name -> input tensor name."""
    variants: dict[str, str] = {}
    cuda = False
    with contextlib.suppress(Exception):
        import torch

        cuda = torch.cuda.is_available()
    with report.step("build ONNX MLP"):
        onnx = onnx_bytes()
        write(repo, "onnx_cpu", "model.onnx", onnx, config_text("onnxruntime_onnx", "KIND_CPU"))
        variants["onnx_cpu"] = "INPUT0"
    providers: list[str] = []
    with contextlib.suppress(Exception):
        import onnxruntime as ort

        providers = ort.get_available_providers()
    with report.step("onnx_cuda: ONNX with the CUDA provider"):
        if not cuda or "CUDAExecutionProvider" not in providers:
            raise Skip(f"needs CUDA and onnxruntime-gpu (providers: {providers})")
        write(repo, "onnx_cuda", "model.onnx", onnx, config_text("onnxruntime_onnx", "KIND_GPU"))
        variants["onnx_cuda"] = "INPUT0"
    with report.step("onnx_trt_ep: ONNX with the TensorRT accelerator"):
        if not cuda or "TensorrtExecutionProvider" not in providers:
            raise Skip(f"needs CUDA and onnxruntime-gpu with TensorRT (providers: {providers})")
        import onnxruntime as ort

        # onnxruntime falls back to CUDA silently when TensorRT's libraries do not load: check first.
        probe = ort.InferenceSession(onnx, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
        if probe.get_providers()[0] != "TensorrtExecutionProvider":
            raise Skip(
                f"the TensorRT provider did not initialise (session providers {probe.get_providers()})"
            )
        accel = (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }'
        )
        write(
            repo, "onnx_trt_ep", "model.onnx", onnx, config_text("onnxruntime_onnx", "KIND_GPU", extra=accel)
        )
        variants["onnx_trt_ep"] = "INPUT0"
    with report.step("trt_plan: build a TensorRT engine (builder API)") as entry:
        if not cuda or not _importable("tensorrt"):
            raise Skip("needs CUDA and the tensorrt package")
        deadline.check(30, "the TensorRT build")
        start = time.perf_counter()
        plan = tensorrt_plan(onnx)
        entry["build_seconds"] = round(time.perf_counter() - start, 1)
        write(repo, "trt_plan", "model.plan", plan, config_text("tensorrt_plan", "KIND_GPU"))
        variants["trt_plan"] = "INPUT0"
    with report.step("torch variants: TorchScript and torch.export"):
        import io

        import torch

        module = torch_module()
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(module), buffer)
        write(
            repo,
            "torch_cpu",
            "model.pt",
            buffer.getvalue(),
            config_text("pytorch_libtorch", "KIND_CPU", torch_names=True),
        )
        variants["torch_cpu"] = "INPUT__0"
        if cuda:
            write(
                repo,
                "torch_cuda",
                "model.pt",
                buffer.getvalue(),
                config_text("pytorch_libtorch", "KIND_GPU", torch_names=True),
            )
            variants["torch_cuda"] = "INPUT__0"
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            program = torch.export.export(module, (torch.ones(2, LAYERS[0]),), dynamic_shapes=({0: batch},))
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
            write(
                repo,
                "torch_export_cuda",
                "model.pt2",
                buffer.getvalue(),
                config_text("torch_aoti", "KIND_GPU", torch_names=True, filename="model.pt2"),
            )
            variants["torch_export_cuda"] = "INPUT__0"
    return variants


# ---------------------------------------------------------------------------------------------
# Server and client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    """KServe v2 over HTTP/1.1 keep-alive with binary tensors (no tritonclient needed)."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}

    def infer(self, model: str, name: str, x: np.ndarray) -> np.ndarray:
        raw = np.ascontiguousarray(x, dtype=np.float32).tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        status, body, headers = self.request(
            "POST",
            f"/v2/models/{model}/infer",
            header + raw,
            {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        )
        if status != 200:
            raise RuntimeError(f"{model}: HTTP {status}: {body[:300]!r}")
        size = int(headers.get("inference-header-content-length", len(body)))
        meta = json.loads(body[:size])
        (output,) = meta["outputs"]
        if "data" in output:
            return np.array(output["data"], dtype=np.float32).reshape(output["shape"])
        return np.frombuffer(body[size:], dtype=np.float32).reshape(output["shape"])


@contextlib.contextmanager
def serve(repo: Path, log_path: Path, deadline: Deadline) -> Iterator[int]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "nereid.server.cli",
        "serve",
        "--model-repository",
        str(repo),
        "--http-address",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--grpc-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--allow-grpc",
        "false",
        "--exit-on-error",
        "false",
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        try:
            limit = time.monotonic() + min(180.0, max(10.0, deadline.left() - 30))
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited with {process.returncode}; see {log_path.name}")
                with contextlib.suppress(OSError, http.client.HTTPException):
                    if Client(port, timeout=2).request("GET", "/v2/health/live")[0] == 200:
                        break
                if time.monotonic() > limit:
                    raise RuntimeError(
                        f"server not live after loading for {limit:.0f} s; see {log_path.name}"
                    )
                time.sleep(0.5)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def repository_index(port: int) -> dict[str, dict[str, str]]:
    status, body, _ = Client(port).request(
        "POST", "/v2/repository/index", b"{}", {"Content-Type": "application/json"}
    )
    if status != 200:
        return {}
    return {
        row["name"]: {"state": row.get("state", ""), "reason": row.get("reason", "")}
        for row in json.loads(body)
    }


def sequential(
    client: Client, model: str, name: str, x: np.ndarray, seconds: float, count: int = 300
) -> dict[str, Any]:
    times: list[float] = []
    end = time.monotonic() + seconds
    while len(times) < count and time.monotonic() < end:
        start = time.perf_counter()
        client.infer(model, name, x)
        times.append((time.perf_counter() - start) * 1000)
    return _stats(times, x.shape[0])


def concurrent(
    port: int, model: str, name: str, x: np.ndarray, clients: int, seconds: float
) -> dict[str, Any]:
    times: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    end = time.monotonic() + seconds

    def worker() -> None:
        client = Client(port)
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                client.infer(model, name, x)
            except Exception as exc:
                errors.append(str(exc))
                return
            with lock:
                times.append((time.perf_counter() - start) * 1000)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(errors[0])
    stats = _stats(times, x.shape[0])
    stats["rows_per_s"] = len(times) * x.shape[0] / elapsed
    return stats


def _stats(times: list[float], rows: int) -> dict[str, Any]:
    if not times:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "rows_per_s": 0.0}
    ordered = sorted(times)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean": statistics.fmean(ordered),
        "rows_per_s": rows * 1000 / statistics.fmean(ordered),
    }


# ---------------------------------------------------------------------------------------------
# Phases


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through `finally`, which writes the report


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(environment=environment())
    deadline = Deadline(args.budget)
    work = Path(tempfile.mkdtemp(prefix="nereid_gpu_check_"))
    try:
        with report.step("import nereid"):
            importlib.import_module("nereid.server.serve")
        variants = build_repository(work / "models", report, deadline)
        rng = np.random.default_rng(1)
        x32 = rng.standard_normal((32, LAYERS[0])).astype(np.float32)
        x1 = x32[:1]
        with (
            report.step(f"serve {len(variants)} variants") as entry,
            serve(work / "models", out / "gpu_check_server.log", deadline) as port,
        ):
            report.models = repository_index(port)
            entry["ready"] = sorted(n for n, m in report.models.items() if m["state"] == "READY")
            ready = [n for n in variants if report.models.get(n, {}).get("state") == "READY"]
            client = Client(port)
            outputs: dict[str, np.ndarray] = {}
            for name in ready:
                with report.step(f"{name}: warm up and compare"):
                    deadline.check(15, f"{name}")
                    for rows in (1, 8, 32, 3):  # TensorRT EP and cuDNN pick kernels on first shapes
                        client.infer(name, variants[name], x32[:rows])
                    outputs[name] = client.infer(name, variants[name], x32)
            expected = reference(x32)
            cpu = outputs.get("onnx_cpu")
            scale = float(np.abs(expected).max())
            for name, got in outputs.items():
                vs_ref = float(np.abs(got - expected).max())
                vs_cpu = float(np.abs(got - cpu).max()) if cpu is not None else float("nan")
                # GPU paths may use TF32 matmuls (10-bit mantissa): allow ~1e-2 relative to the output scale.
                tolerance = (1e-4 if name.endswith("cpu") else 2e-2) * max(1.0, scale)
                report.accuracy[name] = {
                    "vs_reference": vs_ref,
                    "vs_onnx_cpu": vs_cpu,
                    "verdict": "PASS" if vs_ref <= tolerance else f"FAIL (> {tolerance:.2g})",
                }
            per_model = max(3.0, min(8.0, (deadline.left() - 20) / max(1, 3 * len(outputs))))
            for name in outputs:
                with report.step(f"{name}: latency"):
                    deadline.check(3 * per_model, f"timing {name}")
                    report.latency[name] = {
                        "b1": sequential(client, name, variants[name], x1, per_model),
                        "b32": sequential(client, name, variants[name], x32, per_model),
                        "c8": concurrent(port, name, variants[name], x1, 8, per_model),
                    }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        text = report.text()
        print("\n" + text, flush=True)
        (out / "gpu_check_report.txt").write_text(text + "\n")
        (out / "gpu_check_report.json").write_text(
            json.dumps(
                {
                    "environment": report.environment,
                    "steps": report.steps,
                    "models": report.models,
                    "accuracy": report.accuracy,
                    "latency": report.latency,
                },
                indent=2,
                default=str,
            )
        )
    failed = [s for s in report.steps if s["status"].startswith("FAILED")]
    failed += [a for a in report.accuracy.values() if a["verdict"] != "PASS"]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print what this machine has")
    sub.add_parser("deps", help="print the pip requirements still missing, one per line")
    runner = sub.add_parser("run", help="build, serve, compare and time every variant")
    runner.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "out" / "gpu_check"))
    runner.add_argument("--budget", type=float, default=240.0, help="seconds for the whole run")
    args = parser.parse_args(argv)
    if args.command == "env":
        for key, value in environment().items():
            print(f"{key:>22}: {value}")
        return 0
    if args.command == "deps":
        for requirement in missing_requirements():
            print(requirement)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
