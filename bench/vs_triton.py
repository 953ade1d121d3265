"""Nereid against Triton on the same machine, same models, same load generator.

    python bench/vs_triton.py [--quick] [--pin] [--json out.json] [--models identity,add_sub,sleep5ms]

Both servers serve ``bench/models`` (Python-backend models written as a Triton user writes them:
the same ``model.py`` and ``config.pbtxt`` files). Triton is the real ``tritonserver`` shipped in
the ``nvidia-pytriton`` wheel (downloaded into ``bench/.triton/`` on first use, see
``bench/harness.py``), with its Python backend stub running on this environment's Python.

For each model, one server starts with only that model loaded, is measured at every transport and
concurrency, and is stopped before the other starts: the servers never run at the same time, and
the order alternates from one model to the next so that a drift in the machine's background load
does not always favour the same one. The load generator is
:func:`nereid.clients.loadgen.run_load` (closed loop; HTTP with binary tensors, gRPC via grpc.aio).
Full run ~3.5 min (1 s warmup + 4 s per row); ``--quick`` ~1.5 min.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    MODELS,
    Measured,
    Nereid,
    ServerProcess,
    Triton,
    TritonDist,
    libpython_available,
    measure,
    prepare_triton,
    render,
    uptime,
)

from nereid.clients.report import ProgressLine

Key = tuple[str, str, str, int]  # server, model, protocol, concurrency


def run_block(
    server: ServerProcess,
    model: str,
    protocols: list[str],
    levels: list[int],
    args: argparse.Namespace,
    results: dict[Key, Measured],
) -> None:
    progress = ProgressLine(sys.stderr)
    try:
        server.wait_ready()
        for protocol in protocols:
            for level in levels:
                progress(f"[{server.name} {model}]")
                m = measure(server, model, protocol, level, args.duration, args.warmup, progress)
                results[server.name, model, protocol, level] = m
    finally:
        progress.clear()
        server.stop()


def nereid_repository(isolation: str | None) -> Path:
    """``bench/models``, or a copy whose Python models run with ``NEREID_ISOLATION`` = ``isolation``."""
    if isolation is None:
        return MODELS
    root = Path(tempfile.mkdtemp(prefix=f"vs_triton_{isolation}_"))
    for model in MODELS.iterdir():
        if (model / "config.pbtxt").is_file():
            shutil.copytree(model, root / model.name)
            config = root / model.name / "config.pbtxt"
            parameter = f'parameters {{ key: "NEREID_ISOLATION" value: {{ string_value: "{isolation}" }} }}'
            config.write_text(config.read_text() + "\n" + parameter + "\n")
    return root


def table(results: dict[Key, Measured], models: list[str], protocols: list[str], levels: list[int]) -> str:
    headers = ["model", "transport", "conc", "Nereid infer/s", "Triton infer/s", "ratio"]
    headers += ["Nereid p99 ms", "Triton p99 ms", "p99 ratio", "srv CPU us/req N/T", "avg batch N/T"]
    headers += ["queue us N/T"]
    rows = []
    for model in models:
        for protocol in protocols:
            for level in levels:
                n = results.get(("nereid", model, protocol, level))
                t = results.get(("triton", model, protocol, level))
                cells = [model, protocol, str(level)]
                cells += [f"{m.row.throughput:.0f}" if m else "-" for m in (n, t)]
                ok = n and t and t.row.throughput
                ratio = n.row.throughput / t.row.throughput if ok else None  # type: ignore[union-attr]
                cells.append(f"{ratio:.2f}{' *' if ratio < 1 else ''}" if ratio is not None else "-")
                p99 = [m.row.latency.p99_us / 1000 if m and m.row.latency else None for m in (n, t)]
                cells += [f"{v:.2f}" if v is not None else "-" for v in p99]
                cells.append(f"{p99[0] / p99[1]:.2f}" if p99[0] is not None and p99[1] else "-")
                cpu = [f"{m.row.server_cpu_us:.0f}" if m and m.row.server_cpu_us else "-" for m in (n, t)]
                cells.append("/".join(cpu))
                cells.append("/".join(f"{m.avg_batch:.1f}" if m else "-" for m in (n, t)))
                cells.append("/".join(f"{m.queue_us:.0f}" if m else "-" for m in (n, t)))
                errors = sum(m.row.errors for m in (n, t) if m)
                if errors:
                    cells[-1] += f" ({errors} errors)"
                rows.append(cells)
    return render(headers, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1.2 s per row after 0.3 s warmup")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--models", default="identity,add_sub,sleep5ms")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--pin", action="store_true", help="servers on CPU 0, load generator on CPU 1")
    p.add_argument("--no-download", action="store_true", help="use bench/.triton as it is")
    p.add_argument("--nereid-only", action="store_true")
    p.add_argument(
        "--isolation",
        choices=["none", "process"],
        help="run Nereid's Python models in-process (none) or in a stub process; default: the models' own (process)",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.2, 0.3
    models = [m for m in args.models.split(",") if m]
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = [x for x in args.protocols.split(",") if x]
    pin = {0} if args.pin else None
    if args.pin:
        os.sched_setaffinity(0, {1})

    dist: TritonDist | None = None
    why_not = "--nereid-only" if args.nereid_only else libpython_available()
    if why_not is None:
        try:
            dist = prepare_triton(download=not args.no_download)
        except (RuntimeError, OSError) as exc:
            why_not = str(exc)
    if dist is None:
        print(f"Triton will not run: {why_not}", file=sys.stderr)

    started, clock = datetime.now(UTC), time.monotonic()
    results: dict[Key, Measured] = {}
    notes: list[str] = []
    for index, model in enumerate(models):
        order = ["nereid", "triton"] if index % 2 == 0 else ["triton", "nereid"]
        for name in order:
            if name == "triton" and dist is None:
                continue
            notes.append(f"{model} on {name}: {uptime()}")
            if name == "nereid":
                server: ServerProcess = Nereid([model], repository=nereid_repository(args.isolation), pin=pin)
            else:
                server = Triton(dist, [model], pin=pin)  # type: ignore[arg-type]
            run_block(server, model, protocols, levels, args, results)

    print(
        f"{started:%Y-%m-%d %H:%M} UTC, {time.monotonic() - clock:.0f} s; {args.warmup:g} s warmup + "
        f"{args.duration:g} s per row; {os.cpu_count()} CPUs shared by client and server"
        f"{' (pinned: server CPU 0, client CPU 1)' if args.pin else ''}; "
        f"Triton: {'pytriton ' + dist.version() if dist else 'not run (' + str(why_not) + ')'}"
    )
    for note in notes:
        print(f"  before {note}")
    print(table(results, models, protocols, levels))
    print(
        "ratio: Nereid / Triton throughput (* where Nereid is slower); p99 ratio: Nereid / Triton; "
        "srv CPU: server CPU time per request (Triton: server + its Python stub processes); "
        "avg batch: inference_count / execution_count over warmup + row; "
        "queue us: mean queue wait per request from the statistics extension"
    )
    if args.json:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "argv": sys.argv,
            "triton": dist.version() if dist else None,
            "isolation": args.isolation,
            "notes": notes,
            "rows": [
                {"server": s, "model": m, "protocol": p, "concurrency": c, "avg_batch": r.avg_batch}
                | {"queue_us": r.queue_us}
                | r.row.__dict__
                | {"latency": r.row.latency and r.row.latency.__dict__}
                for (s, m, p, c), r in results.items()
            ],
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 1 if any(r.row.errors for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
