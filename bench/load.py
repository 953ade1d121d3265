"""Foundation benchmark: add_sub over HTTP (binary and JSON) and gRPC, against an in-process floor.

Starts ``nereid serve`` on the example repository as a subprocess on free loopback ports,
measures each transport at a few concurrencies with :func:`nereid.clients.loadgen.run_load`,
and compares with the same computation through ``onnxruntime.InferenceSession.run`` in this
process (the floor: ``c`` threads calling ``run`` in a loop, so c=1 is plain sequential calls).

    python bench/load.py [--quick] [--json out.json] [--pin]

Client, floor and server share this machine's CPUs unless ``--pin`` puts the server on CPU 0
and this process on CPU 1; the client's CPU time is then not taken from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from harness import Nereid

from nereid.clients.inputs import ModelSpec, random_sample, request_shapes
from nereid.clients.loadgen import process_cpu, run_load
from nereid.clients.report import LatencyStats, ProgressLine, Row

ROOT = Path(__file__).resolve().parent.parent
MODEL = "add_sub"


def _floor_worker(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], state: dict[str, bool], out: list[int]
) -> None:
    while not state["stop"]:
        began = time.perf_counter_ns()
        session.run(None, feed)
        if state["measure"]:
            out.append(time.perf_counter_ns() - began)


def floor_rows(
    model_path: Path, feed: dict[str, np.ndarray], levels: list[int], warmup: float, duration: float
) -> list[Row]:
    """``InferenceSession.run`` in ``c`` threads (c=1: sequential), with the server's session options."""
    options = ort.SessionOptions()  # the backend's defaults for a config without parameters
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rows = []
    for level in levels:
        latencies: list[list[int]] = [[] for _ in range(level)]
        state = {"measure": False, "stop": False}

        threads = [
            threading.Thread(target=_floor_worker, args=(session, feed, state, out), daemon=True)
            for out in latencies
        ]
        for thread in threads:
            thread.start()
        time.sleep(warmup)
        cpu, start = time.process_time(), time.perf_counter()
        state["measure"] = True
        time.sleep(duration)
        state["measure"] = False
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        state["stop"] = True
        for thread in threads:
            thread.join()
        flat = [x for out in latencies for x in out]
        rows.append(
            Row(
                mode="concurrency",
                level=level,
                duration_s=round(seconds, 3),
                completed=len(flat),
                errors=0,
                throughput=len(flat) / seconds,
                latency=LatencyStats.from_ns(flat),
                client_cpu_us=round(cpu / max(len(flat), 1) * 1e6, 1),
            )
        )
    return rows


def _runner(protocol: str) -> Any:
    if protocol != "grpc":
        try:
            import uvloop

            return uvloop.run
        except ImportError:
            pass
    return asyncio.run


def table(floor: list[Row], results: dict[str, list[Row]]) -> str:
    by_level = {int(r.level): r for r in floor}
    base = by_level.get(1)
    headers = ["transport", "conc", "infer/s", "p50 us", "p90 us", "p99 us", "x floor", "overhead us"]
    headers += ["client CPU us/req", "server CPU us/req", "errors"]
    lines = []
    for name, rows in [("floor (ORT in-process)", floor), *results.items()]:
        for r in rows:
            lat = r.latency
            ref = by_level.get(int(r.level))
            slower = (
                f"{ref.throughput / r.throughput:.1f}" if ref and r.throughput and rows is not floor else "1"
            )
            overhead = "-"
            if int(r.level) == 1 and base and base.latency and lat and rows is not floor:
                overhead = f"{lat.p50_us - base.latency.p50_us:.0f}"
            cells = [name, str(int(r.level)), f"{r.throughput:.0f}"]
            cells += [f"{v:.0f}" for v in (lat.p50_us, lat.p90_us, lat.p99_us)] if lat else ["-"] * 3
            cells += [slower, overhead]
            cells += ["-" if v is None else f"{v:.0f}" for v in (r.client_cpu_us, r.server_cpu_us)]
            cells.append(str(r.errors))
            lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([fmt(headers), *map(fmt, lines)])


def machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "loadavg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 s per level, 0.3 s warmup")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--protocols", default="http,http-json,grpc", help="grpc is skipped until it exists")
    p.add_argument("--http-client", choices=("raw", "aiohttp"), default="raw")
    p.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--pin", action="store_true", help="server on CPU 0, client and floor on CPU 1")
    p.add_argument("--server-arg", action="append", default=[], help="extra `nereid serve` flag")
    p.add_argument("--json", type=Path, help="write every number here")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.0, 0.3
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = [x for x in args.protocols.split(",") if x]
    if args.pin:
        os.sched_setaffinity(0, {1})
    started = datetime.now(UTC)
    before = machine()
    server = Nereid([MODEL], args.model_repository, {0} if args.pin else None, args.server_arg)
    progress = ProgressLine(sys.stderr)
    try:
        server.wait_ready()
        spec = ModelSpec.from_metadata(
            server.get(f"/v2/models/{MODEL}"), server.get(f"/v2/models/{MODEL}/config")["max_batch_size"]
        )
        sample = random_sample(spec, request_shapes(spec), np.random.default_rng(0))
        feed = {t.name: t.data for t in sample}
        progress("[floor] onnxruntime in-process")
        model_file = args.model_repository / MODEL / "1" / "model.onnx"
        floor = floor_rows(model_file, feed, levels, args.warmup, args.duration)
        results = {}
        for protocol in protocols:
            target = server.target(protocol)
            results[protocol] = _runner(protocol)(
                run_load(
                    target,
                    MODEL,
                    protocol=protocol,
                    concurrency=levels,
                    duration=args.duration,
                    warmup=args.warmup,
                    http_client=args.http_client,
                    progress=progress,
                    server_cpu=process_cpu(server.proc.pid),
                )
            )
    finally:
        progress.clear()
        server.stop()
    rows = {name: result.rows for name, result in results.items()}
    shapes = {t.name: list(t.data.shape) for t in sample}
    print(
        f"{MODEL} {shapes} FP32, {args.duration:g}s per row after {args.warmup:g}s warmup, "
        f"{before['cpus']} CPUs shared by client and server{' (pinned: server CPU 0, client CPU 1)' if args.pin else ''}; "
        f"HTTP client: {args.http_client}; load average before {before['loadavg'][0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}"
    )
    print(table(floor, rows))
    print("x floor: floor throughput / server throughput at the same concurrency; "
          "overhead: server p50 - floor p50 at c=1")  # fmt: skip
    if args.json:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "command": shlex.join(["python", sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
            "machine": {**before, "loadavg_after": os.getloadavg()},
            "server": {"args": server.args[3:], "grpc": "grpc" in protocols, "pinned": args.pin},
            "floor": [r.__dict__ | {"latency": r.latency and r.latency.__dict__} for r in floor],
            "results": {name: result.to_dict() for name, result in results.items()},
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    failed = any(r.errors for rs in rows.values() for r in rs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
