"""``nereid bench``: measure a running server's throughput and latency, like perf_analyzer.

Examples::

    nereid bench -m add_sub --concurrency 1,8,32
    nereid bench -m add_sub -i grpc -u localhost:8001 --request-rate 500,1000 --json out.json
    nereid bench -m my_model --shape INPUT0:3,224,224 -b 4 --input-data data.json

Client and server often share a machine: the client's CPU time is then taken from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nereid.clients.inputs import InputDataError, parse_shape
from nereid.clients.loadgen import process_cpu, run_load
from nereid.clients.report import LoadResult, ProgressLine, format_summary, format_table
from nereid.clients.transports import DEFAULT_PORTS, HTTP_CLIENTS, PROTOCOLS, InferError


def _numbers(kind: Callable[[str], float]) -> Callable[[str], list[float]]:
    def parse(text: str) -> list[float]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got '{text}'") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive values, got '{text}'")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nereid bench", description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-x", "--model-version", default="")
    p.add_argument("-u", "--url", default="", help="host:port (default localhost:8000, gRPC :8001)")
    p.add_argument("-i", "--protocol", choices=PROTOCOLS, default="http", help="http sends binary tensors")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_numbers(int), default=[1], help="e.g. 1,8,32")
    load.add_argument("--request-rate", type=_numbers(float), default=[], help="requests/s, e.g. 100,500")
    p.add_argument("--distribution", choices=("poisson", "constant"), default="poisson")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per level")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before each level")
    p.add_argument("-b", "--batch-size", type=int, default=1)
    p.add_argument("--shape", action="append", default=[], help="NAME:d1,d2 (dims after the batch)")
    p.add_argument("--input-data", type=Path, help='JSON file: {"data": [{"INPUT0": [...]}, ...]}')
    p.add_argument("--http-client", choices=HTTP_CLIENTS, default="raw")
    p.add_argument("--max-inflight", type=int, default=1024, help="request-rate mode cap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-pid", type=int, help="report this local process's CPU time per request")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    p.add_argument("--plot", type=Path, help="also write latency and throughput over time as a PNG here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    return p


def _event_loop_runner(protocol: str) -> Callable[[Any], Any]:
    """uvloop for HTTP when installed (cheaper per request); asyncio's loop for grpc.aio."""
    if protocol != "grpc":
        try:
            import uvloop

            return uvloop.run
        except ImportError:
            pass
    return asyncio.run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        shapes = dict(parse_shape(s) for s in args.shape)
    except InputDataError as exc:
        print(f"nereid bench: {exc}", file=sys.stderr)
        return 2
    url = args.url or f"localhost:{DEFAULT_PORTS[args.protocol]}"
    progress = None if args.quiet else ProgressLine(sys.stderr)
    try:
        server_cpu = process_cpu(args.server_pid) if args.server_pid else None
    except OSError as exc:
        print(f"nereid bench: cannot read the CPU time of process {args.server_pid}: {exc}", file=sys.stderr)
        return 2
    runner = _event_loop_runner(args.protocol)
    try:
        result: LoadResult = runner(
            run_load(
                url,
                args.model,
                protocol=args.protocol,
                model_version=args.model_version,
                concurrency=args.concurrency,
                request_rate=args.request_rate,
                distribution=args.distribution,
                duration=args.duration,
                warmup=args.warmup,
                batch_size=args.batch_size,
                shapes=shapes,
                input_data=args.input_data,
                http_client=args.http_client,
                max_inflight=args.max_inflight,
                seed=args.seed,
                progress=progress,
                server_cpu=server_cpu,
            )
        )
    except (InputDataError, InferError, OSError, ValueError) as exc:
        if progress:
            progress.clear()  # before the message, not after it
        print(f"nereid bench: {url}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if progress:
            progress.clear()
    title = (
        f"{result.model} over {result.protocol} at {url}, batch {result.batch_size}, "
        f"shapes {result.shapes} ({result.machine['cpus']} CPUs; client and server may share them)"
    )
    print(format_table(result.rows, title))
    print(format_summary(result.rows))
    if args.plot:
        from nereid.clients.plot import write_plot

        timeline = [point for row in result.rows for point in row.timeline]
        start = min((end - latency for end, latency in timeline), default=0)
        write_plot(args.plot, timeline, start, f"{result.model} {result.protocol}")
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 1 if result.has_errors() else 0


if __name__ == "__main__":
    sys.exit(main())
