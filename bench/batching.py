"""The dynamic batcher's gain: ``sleep5ms`` (5 ms per execute, whatever the batch) at c=1 and c=32.

    python bench/batching.py [--quick] [--with-triton] [--pin] [--json out.json]

Starts ``nereid serve --model-repository bench/models`` (only ``sleep5ms`` loaded) on free
loopback ports and drives it with :func:`nereid.clients.loadgen.run_load` over HTTP (binary
tensors) and gRPC. ``gain = thr(c=32) / thr(c=1)``: at c=1 every request pays one 5 ms execute,
at c=32 one execute can serve up to 32 queued requests, so the ideal gain is
``32 * latency(c=1) / 5 ms`` (~46x when a c=1 request takes ~7 ms). The average batch size is
``inference_count / execution_count`` from the model's statistics over the level (warmup
included). ``--with-triton`` runs the same on Triton (see bench/vs_triton.py) afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Measured, Nereid, ServerProcess, Triton, measure, prepare_triton, render, uptime

from nereid.clients.report import ProgressLine

MODEL = "sleep5ms"
EXECUTE_MS = 5.0


def run_server(
    server: ServerProcess, protocols: list[str], levels: list[int], duration: float, warmup: float
) -> dict[tuple[str, int], Measured]:
    progress = ProgressLine(sys.stderr)
    results = {}
    try:
        server.wait_ready()
        for protocol in protocols:
            for level in levels:
                results[protocol, level] = measure(server, MODEL, protocol, level, duration, warmup, progress)
    finally:
        progress.clear()
        server.stop()
    return results


def summary(
    name: str, results: dict[tuple[str, int], Measured], low: int, high: int
) -> tuple[str, list[str]]:
    rows, gains = [], []
    for (protocol, level), m in results.items():
        lat = m.row.latency
        cells = [name, protocol, str(level), f"{m.row.throughput:.0f}", f"{m.avg_batch:.1f}"]
        cells += [f"{lat.p50_us / 1000:.2f}", f"{lat.p99_us / 1000:.2f}"] if lat else ["-", "-"]
        cells += [f"{m.row.server_cpu_us or 0:.0f}", f"{m.row.client_cpu_us or 0:.0f}", str(m.row.errors)]
        rows.append(cells)
    for protocol in dict.fromkeys(p for p, _ in results):
        one, many = results.get((protocol, low)), results.get((protocol, high))
        if one and many and one.row.throughput and one.row.latency:
            gain = many.row.throughput / one.row.throughput
            ideal = high * (one.row.latency.mean_us / 1000) / EXECUTE_MS
            gains.append(
                f"{name} {protocol}: gain = thr(c={high}) / thr(c={low}) = {many.row.throughput:.0f} / "
                f"{one.row.throughput:.0f} = {gain:.1f}x (ideal ~{ideal:.0f}x: {high} requests per "
                f"{EXECUTE_MS:g} ms execute against one per {one.row.latency.mean_us / 1000:.2f} ms); "
                f"average batch at c={high}: {many.avg_batch:.1f}"
            )
    headers = ["server", "transport", "conc", "infer/s", "avg batch", "p50 ms", "p99 ms"]
    headers += ["server CPU us/req", "client CPU us/req", "errors"]
    return render(headers, rows), gains


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 s per level after 0.5 s warmup")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", default="1,32", help="first and last give the gain")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--with-triton", action="store_true", help="also measure Triton (pytriton's tritonserver)")
    p.add_argument("--pin", action="store_true", help="server on CPU 0, load generator on CPU 1")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 0.5
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = [x for x in args.protocols.split(",") if x]
    pin = {0} if args.pin else None
    if args.pin:
        os.sched_setaffinity(0, {1})
    started = datetime.now(UTC)
    notes = [f"nereid: {uptime()}"]
    results = {"nereid": run_server(Nereid([MODEL], pin=pin), protocols, levels, args.duration, args.warmup)}
    if args.with_triton:
        try:
            dist = prepare_triton()
        except (RuntimeError, OSError) as exc:
            print(f"Triton skipped: {exc}", file=sys.stderr)
        else:
            notes.append(f"triton: {uptime()}")
            server = Triton(dist, [MODEL], pin=pin)
            results["triton"] = run_server(server, protocols, levels, args.duration, args.warmup)
    print(
        f"{MODEL}: {args.duration:g}s per level after {args.warmup:g}s warmup, {os.cpu_count()} CPUs shared by "
        f"client and server{' (pinned: server CPU 0, client CPU 1)' if args.pin else ''}; {started:%Y-%m-%d %H:%M} UTC"
    )
    for note in notes:
        print(f"  before {note}")
    tables, gains = [], []
    for name, measured in results.items():
        table, lines = summary(name, measured, levels[0], levels[-1])
        tables.append(table)
        gains += lines
    print("\n\n".join(tables))
    print("\n".join(gains))
    if args.json:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "argv": sys.argv,
            "notes": notes,
            "results": {
                name: [
                    {"protocol": p, "concurrency": c, "avg_batch": m.avg_batch, **m.row.__dict__}
                    | {"latency": m.row.latency and m.row.latency.__dict__}
                    for (p, c), m in measured.items()
                ]
                for name, measured in results.items()
            },
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 1 if any(m.row.errors for r in results.values() for m in r.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
