"""What tracing costs per request: off, sampled 1 in 1000, and every request traced.

Starts ``nereid serve`` with the bench ``identity`` model (Python backend, dynamic batching) once per
configuration and measures it at concurrency 8 over HTTP (binary tensors) and gRPC, in interleaved
rounds so drift on a shared machine hits every configuration alike. ``--baseline REV`` adds the same
measurement of the code at git revision REV (before the Monitor stage existed), run from a
``git archive`` of it, so "tracing off costs no more than before" is a measured claim.

    .venv/bin/python bench/tracing.py --baseline 466de5d --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import ROOT, Nereid, ServerProcess, free_port, measure, render, uptime

CONFIGS = {
    "off": [],
    "rate 1/1000": ["--trace-config=level=TIMESTAMPS", "--trace-config=rate=1000"],
    "every request": ["--trace-config=level=TIMESTAMPS", "--trace-config=rate=1", "--trace-config=file={tmp}/trace.jsonl"],
}  # fmt: skip


class BaselineNereid(ServerProcess):
    """``nereid serve`` from an unpacked older revision (its folders mapped onto ``nereid``)."""

    name = "nereid-baseline"

    def __init__(self, root: Path, models: list[str]) -> None:
        http, grpc, metrics = free_port(), free_port(), free_port()
        self.http, self.grpc = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        args = [
            sys.executable, "-m", "nereid.server.cli", "serve", f"--model-repository={ROOT / 'bench' / 'models'}",
            "--http-address=127.0.0.1", f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
            "--model-control-mode=explicit", *(f"--load-model={m}" for m in models),
        ]  # fmt: skip
        super().__init__(args, env={**os.environ, "PYTHONPATH": str(root)})


def unpack(revision: str, into: Path) -> Path:
    """``git archive`` of ``revision`` with generated protobuf modules copied in; returns the import root."""
    source = into / "src"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    for generated in (ROOT / "proto").glob("*_pb2*.py"):
        target = source / "proto" / generated.name
        if not target.exists():
            target.write_bytes(generated.read_bytes())
    root = into / "root" / "nereid"
    root.mkdir(parents=True)
    for folder in ("server", "backends", "proto", "ensembles", "clients"):
        if (source / folder).is_dir():
            (root / folder).symlink_to(source / folder)
    return root.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="git revision to measure as well (tracing did not exist there)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nereid-tracing-bench-"))
    names = ([f"baseline {args.baseline}"] if args.baseline else []) + list(CONFIGS)
    baseline_root = unpack(args.baseline, work / "baseline") if args.baseline else None
    results: dict[tuple[str, str], list] = {}
    print(f"before: {uptime()}", flush=True)
    for round_ in range(args.rounds):
        for name in names:
            if name.startswith("baseline"):
                server: ServerProcess = BaselineNereid(baseline_root, ["identity"])  # type: ignore[arg-type]
            else:
                server = Nereid(["identity"], extra=[f.format(tmp=work) for f in CONFIGS[name]])
            try:
                server.wait_ready()
                for protocol in ("http", "grpc"):
                    measured = measure(
                        server, "identity", protocol, args.concurrency, args.duration, args.warmup
                    )
                    results.setdefault((name, protocol), []).append(measured.row)
                    row = measured.row
                    print(f"round {round_ + 1} {name:>22} {protocol:4}: {row.throughput:8.1f}/s "
                          f"p50 {row.latency.p50_us:7.0f} us  server CPU {row.server_cpu_us} us/req", flush=True)  # fmt: skip
            finally:
                server.stop()
    print(f"after: {uptime()}")
    rows = []
    for (name, protocol), measured in results.items():
        med = statistics.median
        rows.append([
            name, protocol, f"{med(r.throughput for r in measured):.1f}",
            f"{med(r.latency.p50_us for r in measured):.0f}", f"{med(r.latency.p99_us for r in measured):.0f}",
            f"{med(r.server_cpu_us or 0 for r in measured):.0f}", str(sum(r.errors for r in measured)),
        ])  # fmt: skip
    rows.sort(key=lambda r: (r[1], names.index(r[0])))
    headers = ["configuration", "protocol", "infer/s", "p50 us", "p99 us", "server CPU us/req", "errors"]
    print(f"\nmedians over {args.rounds} rounds, identity, concurrency {args.concurrency}:")
    print(render(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
