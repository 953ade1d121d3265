"""Security overhead: the gate's checks in-process, then auth, rate limits and TLS end to end.

In-process: microseconds per call of the API-key check, the rate limiter, a restricted-API
check, and the whole HTTP guard (path classification + gate). End to end: ``add_sub`` at
concurrency 8 over HTTP and gRPC against servers started plain, with an API key file, with a
(never reached) request rate limit, and with TLS; the server's CPU time per request is the
number to compare (latency and throughput move with whatever else shares the machine).

    python bench/security.py [--duration 5] [--json out.json]

The load generator speaks neither headers nor TLS, so this script adds them by patching its
HTTP request encoder, its HTTP connection opener and ``grpc.aio.insecure_channel`` in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import platform
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from harness import SHAPES, Nereid, _runner, render, tree_cpu, uptime

from nereid.clients import http1, transports
from nereid.clients.loadgen import run_load
from nereid.server.auth import ANONYMOUS, ApiGroup, Authorizer, KeyStore, RestrictedApis
from nereid.server.gate import Gate
from nereid.server.http.guard import HttpGuard
from nereid.server.ratelimit import RateLimiter, RateLimits

MODEL = "add_sub"
KEY = "bench-key-" + "0" * 54


def _key_file(folder: Path, count: int = 10) -> Path:
    keys = [{"name": f"k{i}", "key": f"other-key-{i:054d}", "groups": ["*"]} for i in range(count - 1)]
    keys.append({"name": "bench", "key": KEY, "groups": ["*"], "models": [MODEL]})
    path = folder / "keys.json"
    path.write_text(json.dumps({"keys": keys}))
    return path


def _per_call_us(fn: Any, number: int = 200_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def in_process(folder: Path) -> list[list[str]]:
    """Microseconds per check, best of five runs."""
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/octet-stream"}
    keys = Authorizer(KeyStore(_key_file(folder)))
    limiter = RateLimiter(RateLimits(requests_per_second=1e12, burst=1e12))
    restricted = Authorizer(restricted=RestrictedApis.parse(["inference:k=v"]))
    full = Gate(keys, limiter)
    guard = HttpGuard(full)

    class Request:  # what the guard reads of an HTTP request
        parts = ["v2", "models", MODEL, "infer"]

    request, scope = Request(), {"client": ("127.0.0.1", 5000)}
    request.headers = headers  # type: ignore[attr-defined]

    def guarded() -> None:
        # The accepted path never suspends, so one send() runs the coroutine to its end.
        with contextlib.suppress(StopIteration):
            guard.admit(request, scope, None).send(None)

    rows = [
        ("API key (10 keys), group and model", lambda: keys.authorize(headers, ApiGroup.INFERENCE, MODEL)),
        ("rate limiter alone (anonymous)", lambda: limiter.admit(ANONYMOUS, "127.0.0.1")),
        ("restricted API header", lambda: restricted.authorize({"k": "v"}, ApiGroup.INFERENCE)),
        ("gate: key + rate limit", lambda: full.check(headers, "127.0.0.1", ApiGroup.INFERENCE, MODEL)),
    ]
    out = [[name, f"{_per_call_us(fn):.2f}"] for name, fn in rows]
    out.append(["HTTP guard (classify + gate)", f"{_per_call_us(guarded):.2f}"])
    return out


def _certs(folder: Path) -> tuple[Path, Path, Path]:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bench-ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
    )
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-out", "srv.pem", "-extfile", "san.ext")  # fmt: skip
    return folder / "ca.pem", folder / "srv.pem", folder / "srv.key"


class ClientPatches:
    """Headers and TLS for the load generator, switched per configuration."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.ca: Path | None = None
        self._encode = http1.encode_request
        self._insecure = grpc.aio.insecure_channel
        transports.encode_request = self.encode  # type: ignore[assignment]
        grpc.aio.insecure_channel = self.channel  # type: ignore[assignment]
        original_open = http1.Http1Pool._open

        async def open_tls(pool: http1.Http1Pool) -> http1.Http1Connection:
            if self.ca is None:
                return await original_open(pool)
            loop = asyncio.get_running_loop()
            context = ssl.create_default_context(cafile=str(self.ca))
            _, conn = await loop.create_connection(
                lambda: http1.Http1Connection(loop), pool.host, pool.port, ssl=context
            )
            pool.opened += 1
            return conn

        http1.Http1Pool._open = open_tls  # type: ignore[method-assign]

    def encode(self, method: str, path: str, host: str, body: bytes = b"", headers: Any = None) -> bytes:
        return self._encode(method, path, host, body, {**(headers or {}), **self.headers})

    def channel(self, target: str, options: Any = None, **kwargs: Any) -> Any:
        if self.ca is not None:
            creds = grpc.ssl_channel_credentials(self.ca.read_bytes())
            real = grpc.aio.secure_channel(target, creds, options=options, **kwargs)
        else:
            real = self._insecure(target, options=options, **kwargs)
        metadata = tuple((k.lower(), v) for k, v in self.headers.items())
        return _MetadataChannel(real, metadata) if metadata else real


class _MetadataChannel:
    """A grpc.aio channel whose unary calls all carry ``metadata``."""

    def __init__(self, channel: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._channel, self._metadata = channel, metadata

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return functools.partial(self._channel.unary_unary(*args, **kwargs), metadata=self._metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def end_to_end(folder: Path, duration: float, warmup: float) -> list[list[str]]:
    ca, cert, key = _certs(folder)
    keys = _key_file(folder)
    tls = [
        f"--{p}-{f}={v}"
        for p in ("http", "grpc")
        for f, v in (("use-ssl", "true"), ("server-cert", cert), ("server-key", key))
    ]
    configs: list[tuple[str, list[str], dict[str, str], Path | None]] = [
        ("plain", [], {}, None),
        ("API key", [f"--api-key-file={keys}"], {"Authorization": f"Bearer {KEY}"}, None),
        ("rate limit", ["--request-rate-limit=1000000000"], {}, None),
        ("TLS", tls, {}, ca),
    ]
    patches = ClientPatches()
    rows = []
    for name, extra, headers, tls_ca in configs:
        server = Nereid([MODEL], extra=extra)
        try:
            server.wait_ready() if tls_ca is None else _wait_tls(server, tls_ca)
            patches.headers, patches.ca = headers, tls_ca
            for protocol in ("http", "grpc"):
                row = _measure(server, protocol, duration, warmup)
                lat = row.latency
                rows.append([
                    name, protocol, f"{row.throughput:.0f}",
                    f"{lat.p50_us:.0f}" if lat else "-", f"{lat.p99_us:.0f}" if lat else "-",
                    f"{row.server_cpu_us:.0f}" if row.server_cpu_us is not None else "-", str(row.errors),
                ])  # fmt: skip
                print("  ".join(rows[-1]), flush=True)
        finally:
            patches.headers, patches.ca = {}, None
            server.stop()
    return rows


def _wait_tls(server: Nereid, ca: Path, timeout: float = 120.0) -> None:
    import urllib.request

    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(
                f"https://{server.http}/v2/health/ready", context=context, timeout=2
            ).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"TLS server not ready:\n{server.output()}")


def _measure(server: Nereid, protocol: str, duration: float, warmup: float) -> Any:
    """One c=8 row, as harness.measure without its (plaintext, keyless) statistics calls."""
    coroutine = run_load(
        server.target(protocol), MODEL, protocol=protocol, concurrency=[8], duration=duration,
        warmup=warmup, shapes=SHAPES.get(MODEL, {}), server_cpu=tree_cpu(server.proc.pid),
    )  # fmt: skip
    return _runner(protocol)(coroutine).rows[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"# {shlex.join(['python', 'bench/security.py', *(argv or sys.argv[1:])])}")
    print(f"# {started}, {platform.machine()}, {uptime()}")
    with tempfile.TemporaryDirectory() as tmp:
        micro = in_process(Path(tmp))
        print(render(["in-process check", "us/call"], micro), flush=True)
        e2e = end_to_end(Path(tmp), args.duration, args.warmup)
    headers = ["config", "transport", "infer/s", "p50 us", "p99 us", "server CPU us/req", "errors"]
    print(render(headers, e2e))
    if args.json:
        args.json.write_text(
            json.dumps({"started": started, "in_process": micro, "end_to_end": e2e}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
