"""Nereid against Triton on a stateful model: concurrent sequences through the sequence batcher.

    python bench/vs_triton_sequence.py [--quick] [--concurrency 1,8,32] [--length 10]

Both servers serve ``bench/models/accumulator`` (the same ``model.py`` and ``config.pbtxt``:
``sequence_batching`` with START/END control inputs, state kept by the model per correlation
id). Servers start one after the other, as in ``bench/vs_triton.py`` (same harness, same
Triton from ``nvidia-pytriton``). Each of ``concurrency`` workers runs sequences back to back in
a closed loop (START, ``length - 2`` middle requests, END; a fresh ``sequence_id`` each time)
through tritonclient's asyncio clients with its ``sequence_id`` / ``sequence_start`` /
``sequence_end`` arguments, and checks every running sum. Throughput counts requests.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    Nereid,
    ServerProcess,
    Triton,
    TritonDist,
    libpython_available,
    prepare_triton,
    render,
    uptime,
)

MODEL = "accumulator"


async def run_level(server: ServerProcess, protocol: str, workers: int, length: int, seconds: float) -> dict:
    """Closed loop of ``workers`` concurrent sequences for ``seconds``; requests/s and p99 latency."""
    if protocol == "grpc":
        import tritonclient.grpc.aio as client_module
    else:
        import tritonclient.http.aio as client_module  # type: ignore[no-redef]
    client: Any = client_module.InferenceServerClient(server.target(protocol))
    ids = itertools.count(1 + (os.getpid() % 1000) * 1_000_000 + workers * 10_000)
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one_sequence() -> None:
        nonlocal errors
        sid = next(ids)
        total = 0.0
        for step in range(1, length + 1):
            tensor = client_module.InferInput("INPUT", [1, 1], "FP32")
            tensor.set_data_from_numpy(np.full((1, 1), step, dtype=np.float32))
            began = time.perf_counter()
            result = await client.infer(
                MODEL, [tensor], sequence_id=sid, sequence_start=step == 1, sequence_end=step == length
            )
            latencies.append(time.perf_counter() - began)
            total += step
            if float(result.as_numpy("OUTPUT")[0, 0]) != total:
                errors += 1

    async def worker() -> None:
        while time.monotonic() < deadline:
            await one_sequence()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.monotonic() - started
    await client.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return {"rate": len(latencies) / elapsed, "p99_ms": p99 * 1000, "errors": errors}


def run_server(
    server: ServerProcess, protocols: list[str], levels: list[int], args: argparse.Namespace
) -> dict:
    results = {}
    try:
        server.wait_ready()
        for protocol in protocols:
            for level in levels:
                asyncio.run(run_level(server, protocol, level, args.length, args.warmup))
                results[protocol, level] = asyncio.run(
                    run_level(server, protocol, level, args.length, args.duration)
                )
                print(f"  {server.name} {protocol} {level}: {results[protocol, level]}", file=sys.stderr)
    finally:
        server.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1.5 s per row after 0.5 s warmup")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--length", type=int, default=10, help="requests per sequence")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--no-download", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.5, 0.5
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = [x for x in args.protocols.split(",") if x]
    why_not = libpython_available()
    dist: TritonDist | None = None
    if why_not is None:
        try:
            dist = prepare_triton(download=not args.no_download)
        except (RuntimeError, OSError) as exc:
            why_not = str(exc)
    started, clock = datetime.now(UTC), time.monotonic()
    notes = [f"nereid: {uptime()}"]
    nereid = run_server(Nereid([MODEL]), protocols, levels, args)
    triton: dict = {}
    if dist is not None:
        notes.append(f"triton: {uptime()}")
        triton = run_server(Triton(dist, [MODEL]), protocols, levels, args)
    print(
        f"{started:%Y-%m-%d %H:%M} UTC, {time.monotonic() - clock:.0f} s; {args.warmup:g} s warmup + "
        f"{args.duration:g} s per row; sequences of {args.length} requests; {os.cpu_count()} CPUs shared "
        f"by client and server; Triton: {'pytriton ' + dist.version() if dist else 'not run (' + str(why_not) + ')'}"
    )
    for note in notes:
        print(f"  before {note}")
    rows = []
    for protocol in protocols:
        for level in levels:
            n, t = nereid.get((protocol, level)), triton.get((protocol, level))
            ratio = n["rate"] / t["rate"] if n and t and t["rate"] else None
            rows.append(
                [
                    MODEL,
                    protocol,
                    str(level),
                    *(f"{m['rate']:.0f}" if m else "-" for m in (n, t)),
                    f"{ratio:.2f}{' *' if ratio < 1 else ''}" if ratio is not None else "-",
                    *(f"{m['p99_ms']:.2f}" if m else "-" for m in (n, t)),
                    str(sum(m["errors"] for m in (n, t) if m)),
                ]
            )
    headers = ["model", "transport", "seqs", "Nereid req/s", "Triton req/s", "ratio", "Nereid p99 ms"]
    print(render([*headers, "Triton p99 ms", "wrong sums"], rows))
    print("ratio: Nereid / Triton requests per second (* where Nereid is slower)")
    return 1 if any(r[-1] != "0" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
