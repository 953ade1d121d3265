"""Results of a load run: latency percentiles, one row per load level, a table and JSON."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np


def percentile(sorted_values: Sequence[float] | np.ndarray, p: float) -> float:
    """Nearest-rank percentile (perf_analyzer's method) of values sorted ascending."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    rank = max(1, math.ceil(p / 100 * n))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True)
class LatencyStats:
    """Latencies of the requests that succeeded, in microseconds."""

    count: int
    mean_us: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    min_us: float
    max_us: float

    @classmethod
    def from_ns(cls, latencies_ns: Sequence[int]) -> LatencyStats | None:
        if not latencies_ns:
            return None
        us = np.sort(np.asarray(latencies_ns, dtype=np.float64)) / 1000.0
        return cls(
            count=len(us),
            mean_us=float(us.mean()),
            p50_us=percentile(us, 50),
            p90_us=percentile(us, 90),
            p95_us=percentile(us, 95),
            p99_us=percentile(us, 99),
            min_us=float(us[0]),
            max_us=float(us[-1]),
        )


@dataclass
class Row:
    """One load level: a concurrency or a request rate, measured for ``duration_s``."""

    mode: str  # "concurrency" | "request_rate"
    level: float
    duration_s: float
    completed: int  # successful responses inside the window
    errors: int  # failed requests inside the window
    throughput: float  # successful inferences per second (times batch size when batching)
    latency: LatencyStats | None
    error_messages: dict[str, int] = field(default_factory=dict)
    #: Request-rate mode: requests actually sent per second (falls short when the client cannot keep up).
    send_rate: float | None = None
    #: Request-rate mode: sends skipped because max_inflight requests were already outstanding.
    skipped: int = 0
    #: CPU time per request (successful or not) in the window: this process, and the server's
    #: when the caller could read it. On a shared machine the two compete for the same cores.
    client_cpu_us: float | None = None
    server_cpu_us: float | None = None
    #: ``(completion perf_counter ns, latency ns)`` of each success, for plots; left out of the JSON.
    timeline: list[tuple[int, int]] = field(default_factory=list, repr=False)


@dataclass
class LoadResult:
    target: str
    protocol: str
    model: str
    model_version: str
    batch_size: int
    shapes: dict[str, list[int]]
    http_client: str
    started: str
    rows: list[Row]
    #: Where the numbers came from; client and server may share these CPUs.
    machine: dict[str, Any] = field(default_factory=lambda: {"cpus": os.cpu_count()})

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        for row in result["rows"]:
            row.pop("timeline", None)
        return result

    def has_errors(self) -> bool:
        return any(row.errors for row in self.rows)


def format_table(rows: Sequence[Row], title: str = "") -> str:
    """A plain-text table: level, throughput, latency percentiles (µs), CPU per request, errors."""
    rate = any(r.mode == "request_rate" for r in rows)
    server_cpu = any(r.server_cpu_us is not None for r in rows)
    headers = ["Rate/s" if rate else "Concurrency", "Infer/s", "p50 us", "p90 us", "p99 us", "mean us"]
    headers += ["Sent/s"] if rate else []
    headers += ["client CPU us/req"] + (["server CPU us/req"] if server_cpu else []) + ["Errors"]
    lines = []
    for r in rows:
        lat = r.latency
        cells = [_num(r.level), f"{r.throughput:.1f}"]
        cells += [_num(v) for v in (lat.p50_us, lat.p90_us, lat.p99_us, lat.mean_us)] if lat else ["-"] * 4
        if rate:
            cells.append(f"{r.send_rate or 0:.1f}")
        cells.append(_opt(r.client_cpu_us))
        if server_cpu:
            cells.append(_opt(r.server_cpu_us))
        cells.append(str(r.errors))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    out = [title] if title else []
    out.append("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in lines]
    for r in rows:
        for message, count in r.error_messages.items():
            out.append(f"  {_num(r.level)}: {count} x {message}")
    return "\n".join(out)


def format_summary(rows: Sequence[Row]) -> str:
    """One end-of-run paragraph over every level: totals and latency percentiles in milliseconds."""
    latencies = sorted(lat for row in rows for _, lat in row.timeline)
    completed, errors = sum(r.completed for r in rows), sum(r.errors for r in rows)
    seconds = sum(r.duration_s for r in rows)
    text = f"Summary: {completed} requests ok, {errors} failed, in {seconds:.1f} s measured"
    if not latencies:
        return text
    ms = [percentile(latencies, p) / 1e6 for p in (50, 90, 95, 99)]
    text += f" ({completed / seconds:,.1f} req/s)\n"
    text += "  latency ms: p50 {:.3f}  p90 {:.3f}  p95 {:.3f}  p99 {:.3f}".format(*ms)
    return text + f"  max {latencies[-1] / 1e6:.3f}"


def _opt(value: float | None) -> str:
    return "-" if value is None else _num(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


class ProgressLine:
    """One status line on a terminal stream, rewritten in place with ``\\r``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._width = 0

    def __call__(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
