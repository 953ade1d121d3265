"""The load engine: closed-loop concurrency sweeps and open-loop request rates, in one event loop.

Each load level runs ``warmup`` seconds, then a measurement window of ``duration`` seconds.
A request counts in the window when it *completes* inside it (perf_analyzer does the same);
latency is measured from the moment it was handed to the transport to its complete response.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from nereid.clients.inputs import load_input_data, random_sample, request_shapes
from nereid.clients.report import LatencyStats, LoadResult, Row
from nereid.clients.transports import InferError, Transport, make_transport

MAX_ERROR_KINDS = 8
DRAIN_SECONDS = 5.0
Progress = Callable[[str], None]


@dataclass
class LoadOptions:
    """Everything a run can vary besides the target and the model."""

    protocol: str = "http"  #: http (binary tensors), http-json or grpc
    model_version: str = ""
    #: Closed loop: this many requests outstanding at all times, one row per value.
    concurrency: Sequence[int] = (1,)
    #: Open loop instead: requests per second, one row per value (overrides ``concurrency``).
    request_rate: Sequence[float] = ()
    distribution: str = "poisson"  #: request-rate arrivals: poisson or constant
    duration: float = 5.0  #: seconds measured per level
    warmup: float = 1.0  #: seconds run, and not measured, before each level
    batch_size: int = 1
    shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)  #: NAME -> dims after the batch
    input_data: str | Path | Mapping[str, Any] | None = None  #: perf_analyzer-style JSON
    http_client: str = "raw"  #: raw (asyncio protocol + httptools) or aiohttp
    max_inflight: int = 1024  #: request-rate mode: cap on outstanding requests
    seed: int = 0
    progress: Progress | None = None
    #: Cumulative CPU seconds of the server process (see :func:`process_cpu`); when given,
    #: each row reports the server's CPU time per request next to the client's own.
    server_cpu: Callable[[], float] | None = None


def process_cpu(pid: int) -> Callable[[], float]:
    """A reader of the CPU seconds (user + system, all threads) process ``pid`` has used (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    path = Path(f"/proc/{pid}/stat")

    def read() -> float:
        fields = path.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    read()  # fail now, not mid-run, when it cannot be read
    return read


class _Window:
    """Counts what completes between :meth:`open` and :meth:`close`."""

    def __init__(self, server_cpu: Callable[[], float] | None = None) -> None:
        self.server_cpu = server_cpu
        self.cpu = {"client": 0.0, "server": 0.0}
        self.is_open = False
        self.start = self.end = 0
        self.latencies: list[int] = []
        self.ends: list[int] = []  # completion instants of the successes, for plots over time
        self.errors: dict[str, int] = {}
        self.failed = 0
        self.sent = 0
        self.skipped = 0

    def open(self) -> None:
        self.cpu = {"client": -time.process_time(), "server": -self.server_cpu() if self.server_cpu else 0.0}
        self.start, self.is_open = time.perf_counter_ns(), True

    def close(self) -> None:
        self.end, self.is_open = time.perf_counter_ns(), False
        self.cpu["client"] += time.process_time()
        if self.server_cpu:
            self.cpu["server"] += self.server_cpu()

    def cpu_per_request_us(self, side: str) -> float | None:
        done = len(self.latencies) + self.failed
        if not done or (side == "server" and self.server_cpu is None):
            return None
        return round(self.cpu[side] / done * 1e6, 1)

    def record(self, began: int, error: str | None) -> None:
        if not self.is_open:
            return
        if error is None:
            now = time.perf_counter_ns()
            self.latencies.append(now - began)
            self.ends.append(now)
            return
        self.failed += 1
        key = error if error in self.errors or len(self.errors) < MAX_ERROR_KINDS else "(other errors)"
        self.errors[key] = self.errors.get(key, 0) + 1


async def _one(transport: Transport, prepared: Any, window: _Window) -> bool:
    """Send one request and record it; False after a connection-level failure."""
    began = time.perf_counter_ns()
    try:
        await transport.infer(prepared)
    except InferError as exc:
        window.record(began, str(exc))
    except Exception as exc:  # connection-level: refused, reset, closed mid-response, ...
        window.record(began, f"{type(exc).__name__}: {exc}")
        return False
    else:
        window.record(began, None)
    return True


async def _closed_loop(
    transport: Transport, payloads: list[Any], concurrency: int, window: _Window, stop: asyncio.Event
) -> None:
    async def worker(index: int) -> None:
        k = index
        while not stop.is_set():
            if not await _one(transport, payloads[k % len(payloads)], window):
                await asyncio.sleep(0.01)  # a refused connection fails at once; do not spin
            k += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def _open_loop(
    transport: Transport,
    payloads: list[Any],
    rate: float,
    options: LoadOptions,
    window: _Window,
    stop: asyncio.Event,
) -> None:
    rng = random.Random(options.seed)
    inflight: set[asyncio.Task[bool]] = set()
    loop = asyncio.get_running_loop()
    next_send = loop.time()
    k = 0
    while not stop.is_set():
        next_send += rng.expovariate(rate) if options.distribution == "poisson" else 1.0 / rate
        delay = next_send - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # when behind schedule, send at once to catch up
        if len(inflight) >= options.max_inflight:
            window.skipped += window.is_open
            continue
        task = asyncio.create_task(_one(transport, payloads[k % len(payloads)], window))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        window.sent += window.is_open
        k += 1
    if inflight:
        await asyncio.wait(inflight)


async def measure_level(
    transport: Transport, payloads: list[Any], mode: str, level: float, options: LoadOptions
) -> Row:
    """One row: run ``payloads`` (prepared by ``transport``, used round-robin) at one load level.

    ``mode`` is ``"concurrency"`` (``level`` requests always outstanding) or ``"request_rate"``
    (``level`` requests per second). Failures are counted in the row, never raised.
    """
    window, stop = _Window(options.server_cpu), asyncio.Event()
    if mode == "concurrency":
        load = _closed_loop(transport, payloads, int(level), window, stop)
    else:
        load = _open_loop(transport, payloads, level, options, window, stop)
    task = asyncio.create_task(load)
    label = f"[{transport.protocol} {'c' if mode == 'concurrency' else 'rate'}={level:g}]"
    try:
        await _tick(options.progress, f"{label} warmup", options.warmup, window)
        window.open()
        await _tick(options.progress, f"{label} measuring", options.duration, window)
        window.close()
    finally:
        # Let outstanding requests finish so their connections stay reusable; then cut them off.
        stop.set()
        done, _ = await asyncio.wait([task], timeout=DRAIN_SECONDS)
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    seconds = (window.end - window.start) / 1e9
    completed = len(window.latencies)
    return Row(
        mode=mode,
        level=level,
        duration_s=round(seconds, 3),
        completed=completed,
        errors=window.failed,
        throughput=completed * options.batch_size / seconds,
        latency=LatencyStats.from_ns(window.latencies),
        error_messages=window.errors,
        send_rate=window.sent / seconds if mode == "request_rate" else None,
        skipped=window.skipped,
        client_cpu_us=window.cpu_per_request_us("client"),
        server_cpu_us=window.cpu_per_request_us("server"),
        timeline=list(zip(window.ends, window.latencies, strict=True)),
    )


BAR = 20  # progress bar width in characters


async def _tick(progress: Progress | None, label: str, seconds: float, window: _Window) -> None:
    """Sleep ``seconds``, refreshing the progress line a few times a second."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds
    while (now := loop.time()) < end:
        if progress is not None:
            filled = int(BAR * (now - start) / seconds) if seconds > 0 else BAR
            text = f"{label} [{'#' * filled}{'.' * (BAR - filled)}] {now - start:4.1f}/{seconds:g}s"
            if window.is_open:
                done = len(window.latencies)
                text += f"  {done} ok  {done / max(now - start, 1e-9):,.0f} req/s  {window.failed} errors"
            progress(text)
        await asyncio.sleep(min(0.25, end - now))


async def run_load(target: str, model: str, **options: Any) -> LoadResult:
    """Measure ``model`` at ``target`` (``host:port``) at each load level; see :class:`LoadOptions`."""
    opts = LoadOptions(**options)
    if opts.distribution not in ("poisson", "constant"):
        raise ValueError(f"unknown distribution '{opts.distribution}'; use poisson or constant")
    levels: list[tuple[str, float]] = (
        [("request_rate", float(r)) for r in opts.request_rate]
        if opts.request_rate
        else [("concurrency", int(c)) for c in opts.concurrency]
    )
    if not levels or any(level <= 0 for _, level in levels):
        raise ValueError("load levels must be positive")
    transport = make_transport(opts.protocol, target, opts.http_client)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    peak = opts.max_inflight if opts.request_rate else max(int(level) for _, level in levels)
    await transport.open(peak)
    try:
        spec = await transport.model_spec(model, opts.model_version)
        shapes = request_shapes(spec, opts.shapes, opts.batch_size)
        if opts.input_data is not None:
            samples = load_input_data(opts.input_data, spec, opts.shapes, opts.batch_size)
        else:
            samples = [random_sample(spec, shapes, np.random.default_rng(opts.seed))]
        payloads = [transport.prepare(spec, sample) for sample in samples]
        rows = [await measure_level(transport, payloads, mode, level, opts) for mode, level in levels]
    finally:
        await transport.close()
    return LoadResult(
        target=target,
        protocol=opts.protocol,
        model=model,
        model_version=opts.model_version,
        batch_size=opts.batch_size,
        shapes={t.name: list(t.data.shape) for t in samples[0]},
        http_client=opts.http_client if opts.protocol != "grpc" else "",
        started=started,
        rows=rows,
        machine={"cpus": os.cpu_count(), "loadavg_after": os.getloadavg()},
    )
