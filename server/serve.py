"""Runs the whole server in one process and one event loop: HTTP, gRPC and metrics.

Shutdown is a drain a load balancer can follow (``NereidServer.stop``):

1. readiness turns false (``core.begin_drain``); every listener keeps serving, and HTTP
   responses ask keep-alive clients to close;
2. after ``--drain-delay-secs`` the listeners close and idle connections with them;
3. in-flight requests and streams get ``--exit-timeout-secs`` to finish, then are cancelled;
4. the models unload and the process exits, within that bound even if a model's ``execute``
   never returns (a watchdog ends the process).

A second SIGTERM or SIGINT skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from nereid.server import logs
from nereid.server.auth import Authorizer, RestrictedApis, key_store_from
from nereid.server.core import CoreOptions, InferenceCore
from nereid.server.gate import Gate
from nereid.server.http.app import HttpFrontend
from nereid.server.http.guard import HttpGuard
from nereid.server.http.server import HttpListener
from nereid.server.log_settings import LOG_SETTINGS
from nereid.server.metrics import MetricsApp, build_registry
from nereid.server.openai.app import OpenAIFrontend
from nereid.server.ratelimit import RateLimitCollector, RateLimiter, RateLimits
from nereid.server.resource_limiter import resource_limiter
from nereid.server.settings import Settings, parse_settings
from nereid.server.status.page import StatusPage
from nereid.server.tracing import TraceManager

log = logging.getLogger("nereid")
# Unloading models after the drain may take this long before the watchdog ends the process.
UNLOAD_GRACE_S = 5.0


def build_gates(settings: Settings) -> tuple[Gate, Gate]:
    """The HTTP and gRPC gates: one key store and one rate limiter, each transport's restrictions."""
    keys = key_store_from(settings.api_key_file, settings.api_key)
    limits = RateLimits(settings.request_rate_limit, settings.request_rate_burst, settings.token_rate_limit)
    # A key file may set per-key limits even when no default limit is on.
    limiter = RateLimiter(limits) if limits.enabled or settings.api_key_file else None
    http = Gate(Authorizer(keys, RestrictedApis.parse(settings.http_restricted_api)), limiter)
    grpc = Gate(Authorizer(keys, RestrictedApis.parse(settings.grpc_restricted_protocol, grpc=True)), limiter)
    return http, grpc


def http_tls(settings: Settings) -> dict[str, Any] | None:
    """uvicorn's TLS options for the HTTP port (None serves plaintext)."""
    if not (settings.http_use_ssl or settings.http_use_ssl_mutual):
        return None
    return {
        "ssl_certfile": settings.http_server_cert,
        "ssl_keyfile": settings.http_server_key,
        "ssl_ca_certs": settings.http_root_cert or None,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if settings.http_use_ssl_mutual else ssl.CERT_NONE,
    }


def single_model_repository(folder: Path, name: str) -> Path:
    """A repository holding one link, ``name`` → ``folder`` (KServe's one-model storageUri)."""
    root = Path(tempfile.mkdtemp(prefix="nereid-repo-"))
    (root / name).symlink_to(folder.resolve(), target_is_directory=True)
    return root


class NereidServer:
    """The server's parts wired together; ``start`` then ``wait``/``stop``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        roots = settings.model_repository
        if settings.model_name:
            roots = [single_model_repository(roots[0], settings.model_name)]
        options = CoreOptions(
            settings.strict_readiness,
            settings.model_control_mode,
            settings.repository_poll_secs,
            settings.model_memory_budget,
            allow_client_shm=settings.allow_client_shm,
            response_cache_bytes=settings.response_cache_bytes(),
            resource_limiter=resource_limiter(settings.rate_limit, settings.rate_limit_resource),
        )
        self.core = InferenceCore(roots, options, settings.model_load_thread_count)
        self.http = HttpFrontend(self.core, settings.http_max_input_size)
        self.http_gate, self.grpc_gate = build_gates(settings)
        if self.http_gate.enabled:
            self.http.guard = HttpGuard(self.http_gate)
        self.core.tracing = TraceManager(settings.trace_config)
        self.http.access_log = settings.log_access
        openai_frontend = OpenAIFrontend(self.core)
        for prefix in ("v1", "tokenize", "detokenize"):  # vLLM serves /tokenize and /detokenize at the root
            self.http.mounts[prefix] = openai_frontend
        self.http.mounts[""] = self.http.mounts["status"] = StatusPage(self.core)
        self.ports: dict[str, int] = {}
        self._listeners: list[HttpListener] = []
        self._grpc: Any = None
        self._stopped = asyncio.Event()
        self._force = asyncio.Event()
        #: Set when the drain ran out of time and work was abandoned.
        self.forced = False

    async def start(self) -> None:
        """Listen first (probes and balancers see 503 while models load), then load."""
        s = self.settings
        try:
            await self._listen()
            models = s.load_model if s.model_control_mode == "explicit" else None
            await self.core.start(None if models == ["*"] else models)
            failed = [r for r in self.core.repository_index() if r.state != "READY" and r.reason != "evicted"]
            if s.exit_on_error and failed:
                raise SystemExit(
                    "error: some models failed to load (see the table above); "
                    "--exit-on-error=false serves the others"
                )
        except BaseException:
            await self._close_listeners(0.0)
            raise

    async def _listen(self) -> None:
        s = self.settings
        if s.allow_http:
            self.ports["http"] = await self._serve_asgi(self.http, s.http_address, s.http_port, http_tls(s))
        if s.allow_grpc:
            from nereid.server.grpc.server import GrpcFrontend, server_credentials

            credentials = None
            if s.grpc_use_ssl or s.grpc_use_ssl_mutual:
                credentials = server_credentials(
                    s.grpc_server_cert, s.grpc_server_key, s.grpc_root_cert, s.grpc_use_ssl_mutual
                )
            grpc_frontend = GrpcFrontend(
                self.core, s.grpc_max_input_size, self.grpc_gate, credentials, access_log=s.log_access
            )
            self.ports["grpc"] = await grpc_frontend.start(s.grpc_address or s.http_address, s.grpc_port)
            self._grpc = grpc_frontend
        if s.allow_metrics:
            registry = build_registry(self.core)
            if self.http_gate.limiter is not None:
                registry.register(RateLimitCollector(self.http_gate.limiter))
            self.ports["metrics"] = await self._serve_asgi(
                MetricsApp(registry), s.metrics_address or s.http_address, s.metrics_port
            )

    async def _serve_asgi(self, app: Any, address: str, port: int, tls: dict[str, Any] | None = None) -> int:
        s = self.settings
        listener = HttpListener(app, address, port, s.exit_timeout_secs, tls, s.http_header_timeout_secs)
        self._listeners.append(listener)
        return await listener.start()

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
        """First call starts the drain; a second one cuts it short."""
        if self._stopped.is_set():
            log.warning("second stop signal: exiting without waiting for in-flight requests")
            self._force.set()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    async def _sleep_unless_forced(self, seconds: float) -> None:
        if seconds > 0 and not self._force.is_set():
            force = asyncio.create_task(self._force.wait())
            await asyncio.wait([force], timeout=seconds)
            force.cancel()

    async def stop(self) -> None:
        """Graceful drain (see the module docstring), bounded by drain delay + exit timeout."""
        s = self.settings
        self.core.begin_drain()
        for listener in self._listeners:
            listener.drain()
        if s.drain_delay_secs > 0:
            log.info("not ready; still serving for %.1f s (--drain-delay-secs)", s.drain_delay_secs)
        await self._sleep_unless_forced(s.drain_delay_secs)
        timeout = 0.0 if self._force.is_set() else float(s.exit_timeout_secs)
        log.info("closing listeners; in-flight requests get %.0f s (--exit-timeout-secs)", timeout)
        finished = await self._close_listeners(timeout)
        if not finished:
            self.forced = True
            log.warning("--exit-timeout-secs passed: in-flight requests were cancelled")
        # Abandoned requests may hold model instances: give their unload a token second only.
        grace = 1.0 if self.forced else UNLOAD_GRACE_S
        try:
            await asyncio.wait_for(self.core.stop(), grace)
        except TimeoutError:
            self.forced = True
            log.warning("models did not unload within %.0f s; exiting anyway", grace)
        await asyncio.to_thread(self.core.tracing.shutdown)

    async def _close_listeners(self, timeout: float) -> bool:
        """Close every listener at once, each with ``timeout`` for its in-flight work."""
        jobs: list[Any] = [listener.stop(timeout) for listener in self._listeners]
        if self._grpc is not None:
            jobs.append(self._grpc.stop(timeout))
        self._listeners, self._grpc = [], None
        results = await asyncio.gather(*jobs) if jobs else []
        return all(result is not False for result in results)


def _hard_exit(code: int) -> None:
    """Exit now: threads still inside a model's ``execute`` would hold a normal exit open
    (the interpreter and the event loop's executor both join them)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _watchdog(seconds: float) -> None:
    """End the process if the drain itself overruns."""

    def expire() -> None:
        log.error("drain exceeded %.0f s; exiting now", seconds)
        _hard_exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


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
    addresses = {"grpc": settings.grpc_address, "metrics": settings.metrics_address}
    for name, port in server.ports.items():
        log.info("started %s service at %s:%d", name, addresses.get(name) or settings.http_address, port)
    if not server.http_gate.authorizer.enabled and settings.http_address in ("0.0.0.0", "::"):
        log.info("serving on all interfaces without API keys (see README 'Security')")
    await server.wait()
    log.info("shutting down: draining in-flight requests")
    _watchdog(settings.drain_delay_secs + settings.exit_timeout_secs + UNLOAD_GRACE_S + 2)
    await server.stop()
    if server.forced:
        _hard_exit(1)
    return 0


def run(argv: list[str]) -> int:
    try:
        settings = parse_settings(argv)
    except ValueError as exc:
        print(f"nereid serve: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_verbose)
    LOG_SETTINGS.update({"log_format": settings.log_format, "log_verbose_level": settings.log_verbose})
    try:
        import uvloop

        return uvloop.run(_main(settings))
    except ImportError:
        return asyncio.run(_main(settings))
