"""Runs the whole server in one process and one event loop: HTTP, gRPC and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from nereid.server import logs
from nereid.server.core import CoreOptions, InferenceCore
from nereid.server.http.app import HttpFrontend
from nereid.server.metrics import MetricsApp, build_registry
from nereid.server.openai.app import OpenAIFrontend
from nereid.server.settings import Settings, parse_settings
from nereid.server.status.page import StatusPage
from nereid.server.tracing import TraceManager

log = logging.getLogger("nereid")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: NereidServer owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class NereidServer:
    """The server's parts wired together; ``start`` then ``wait``/``stop``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        options = CoreOptions(settings.strict_readiness, settings.model_control_mode)
        self.core = InferenceCore(settings.model_repository, options, settings.model_load_thread_count)
        self.core.tracing = TraceManager(settings.trace_config)
        self.http = HttpFrontend(self.core, settings.http_max_input_size)
        self.http.access_log = settings.log_access
        self.http.mounts["v1"] = OpenAIFrontend(self.core)
        self.http.mounts[""] = self.http.mounts["status"] = StatusPage(self.core)
        self.ports: dict[str, int] = {}
        self._servers: list[_Uvicorn] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: object | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        models = s.load_model if s.model_control_mode == "explicit" else None
        if models == ["*"]:
            models = None
        await self.core.start(models)
        if s.exit_on_error and any(row.state != "READY" for row in self.core.repository_index()):
            raise SystemExit(
                "error: some models failed to load (see the table above); "
                "--exit-on-error=false serves the others"
            )
        if s.allow_http:
            self.ports["http"] = await self._serve_asgi(self.http, s.http_port)
        if s.allow_grpc:
            from nereid.server.grpc.server import GrpcFrontend

            grpc_frontend = GrpcFrontend(self.core, s.grpc_max_input_size)
            self.ports["grpc"] = await grpc_frontend.start(s.http_address, s.grpc_port)
            self._grpc = grpc_frontend
        if s.allow_metrics:
            self.ports["metrics"] = await self._serve_asgi(
                MetricsApp(build_registry(self.core)), s.metrics_port
            )

    async def _serve_asgi(self, app: Any, port: int) -> int:
        sock = _bind(self.settings.http_address, port)
        config = uvicorn.Config(
            app,
            http="httptools",
            loop="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=30,
            backlog=2048,
        )
        server = _Uvicorn(config)
        self._servers.append(server)
        self._tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
        while not server.started:
            await asyncio.sleep(0.01)
        return int(sock.getsockname()[1])

    def model_table(self) -> str:
        rows = [
            (r.name, r.version, r.state + (f": {r.reason}" if r.reason else ""))
            for r in self.core.repository_index()
        ]
        widths = [
            max([len(h), *(len(row[i]) for row in rows)])
            for i, h in enumerate(("Model", "Version", "Status"))
        ]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

        def line(cells: tuple[str, ...]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        return "\n".join([rule, line(("Model", "Version", "Status")), rule, *map(line, rows), rule])

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Graceful drain: not ready, stop listening, let in-flight requests finish, unload."""
        self.core.begin_drain()
        grace = float(self.settings.exit_timeout_secs)
        if self._grpc is not None:
            await self._grpc.stop(grace)  # type: ignore[attr-defined]
        for server in self._servers:
            server.should_exit = True
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        await self.core.stop()
        await asyncio.to_thread(self.core.tracing.shutdown)


async def _main(settings: Settings) -> int:
    server = NereidServer(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.start()
    except SystemExit as exc:
        print(server.model_table(), flush=True)
        print(exc, file=sys.stderr, flush=True)
        await server.core.stop()
        return 1
    print(server.model_table(), flush=True)
    for name, port in server.ports.items():
        log.info("started %s service at %s:%d", name, settings.http_address, port)
    await server.wait()
    log.info("shutting down: draining in-flight requests")
    await server.stop()
    return 0


def run(argv: list[str]) -> int:
    try:
        settings = parse_settings(argv)
    except ValueError as exc:
        print(f"nereid serve: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_verbose)
    try:
        import uvloop

        return uvloop.run(_main(settings))
    except ImportError:
        return asyncio.run(_main(settings))
