"""The Python backend's two modes, A/B: in-process (the opt-in) against a stub process (the default).

    python bench/stub_process.py [--quick] [--rounds 2] [--models identity,add_sub] [--concurrency 8,32]
                                 [--with-triton] [--json out.json]

Both sides serve the same ``bench/models`` files, copied into two temporary repositories that
differ only in ``parameters { key: "NEREID_ISOLATION" ... }`` (``none`` / ``process``). For each
model and round one server starts, is measured at every concurrency over HTTP (binary tensors,
closed loop, :func:`harness.measure`), and stops before the other side starts; the order
alternates from round to round so a drift in the machine's load does not always favour one
side. The table reports the mean over rounds and the stub / in-process ratio. ``--with-triton``
adds Triton (from ``bench/.triton``, see ``bench/harness.py``) as a third side, so each Nereid
mode is also compared with Triton's own stub.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import MODELS, Measured, Nereid, ServerProcess, Triton, measure, prepare_triton, render, uptime

from nereid.clients.report import ProgressLine

MODES = {"in-process": "none", "stub": "process"}


def repository(root: Path, mode: str, models: list[str]) -> Path:
    """``bench/models`` with each config pinned to ``mode``."""
    folder = root / mode
    for model in models:
        shutil.copytree(MODELS / model, folder / model, ignore=shutil.ignore_patterns("__pycache__"))
        config = folder / model / "config.pbtxt"
        value = MODES[mode]
        config.write_text(
            config.read_text()
            + f'\nparameters {{ key: "NEREID_ISOLATION" value: {{ string_value: "{value}" }} }}\n'
        )
    return folder


def run_side(
    server: ServerProcess, model: str, levels: list[int], args: argparse.Namespace
) -> dict[int, Measured]:
    progress = ProgressLine(sys.stderr)
    out: dict[int, Measured] = {}
    try:
        server.wait_ready()
        for level in levels:
            progress(f"[{server.name} {model} c={level}]")
            out[level] = measure(server, model, "http", level, args.duration, args.warmup, progress)
    finally:
        progress.clear()
        server.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1.5 s per row after 0.5 s warmup")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--models", default="identity,add_sub")
    p.add_argument("--concurrency", default="8,32")
    p.add_argument("--with-triton", action="store_true", help="also Triton, from bench/.triton (no download)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.5, 0.5
    models = [m for m in args.models.split(",") if m]
    levels = [int(c) for c in args.concurrency.split(",")]
    sides = list(MODES)
    dist = prepare_triton(download=False) if args.with_triton else None
    if dist is not None:
        sides.append("triton")

    started, clock = datetime.now(UTC), time.monotonic()
    results: dict[tuple[str, str, int], list[Measured]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nereid-stub-bench-") as tmp:
        repos = {mode: repository(Path(tmp), mode, models) for mode in MODES}
        for model in models:
            for index in range(args.rounds):
                order = sides if index % 2 == 0 else sides[::-1]
                for side in order:
                    notes.append(f"{model} round {index + 1} {side}: {uptime()}")
                    server: ServerProcess = (
                        Triton(dist, [model]) if side == "triton" and dist else Nereid([model], repos[side])  # type: ignore[arg-type]
                    )
                    for level, m in run_side(server, model, levels, args).items():
                        results.setdefault((side, model, level), []).append(m)

    def mean(side: str, model: str, level: int) -> float:
        return statistics.fmean(m.row.throughput for m in results.get((side, model, level), [])) or 0.0

    headers = ["model", "conc", *(f"{s} infer/s" for s in sides), "stub/in-process"]
    if dist is not None:
        headers += ["in-process/triton", "stub/triton"]
    headers += [f"{s} p99 ms" for s in sides]
    rows = []
    for model in models:
        for level in levels:
            rates = [mean(s, model, level) for s in sides]
            runs = [" ".join(f"{m.row.throughput:.0f}" for m in results[s, model, level]) for s in sides]
            cells = [model, str(level), *(f"{r:.0f} ({run})" for r, run in zip(rates, runs, strict=True))]
            cells.append(f"{rates[1] / rates[0]:.2f}" if rates[0] else "-")
            if dist is not None:
                cells += [f"{rates[i] / rates[2]:.2f}" if rates[2] else "-" for i in (0, 1)]
            for s in sides:
                p99 = [m.row.latency.p99_us / 1000 for m in results[s, model, level] if m.row.latency]
                cells.append(f"{statistics.fmean(p99):.2f}" if p99 else "-")
            rows.append(cells)
    print(
        f"{started:%Y-%m-%d %H:%M} UTC, {time.monotonic() - clock:.0f} s; {args.rounds} rounds per side, "
        f"{args.warmup:g} s warmup + {args.duration:g} s per row; HTTP; {os.cpu_count()} CPUs shared by "
        "client and server"
    )
    for note in notes:
        print(f"  before {note}")
    print(render(headers, rows))
    print("infer/s: mean over rounds (each round's value in brackets)")
    if args.json:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "argv": sys.argv,
            "notes": notes,
            "rows": [
                {"side": s, "model": m, "concurrency": c, "round": i, "avg_batch": r.avg_batch}
                | r.row.__dict__
                | {"latency": r.row.latency and r.row.latency.__dict__}
                for (s, m, c), runs in results.items()
                for i, r in enumerate(runs)
            ],
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 1 if any(m.row.errors for runs in results.values() for m in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
