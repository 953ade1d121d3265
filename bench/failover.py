"""Three Nereid replicas behind HAProxy under a bounded load: no fault, one SIGKILL, a rolling restart.

``python bench/failover.py`` starts three ``nereid serve`` processes on free loopback ports, runs
HAProxy with ``deploy/haproxy/haproxy.cfg`` (its ports replaced by the free ones), and drives
``add_sub`` over HTTP (keep-alive ``http.client``) and gRPC (through HAProxy's HTTP/2 mode) from
worker threads. Three phases, each printed as requests, failed requests, p50/p99 and throughput:

- ``baseline``: the same load with no fault;
- ``kill``: one replica gets SIGKILL, is restarted and re-admitted by the health checks;
- ``rolling``: each replica in turn gets SIGTERM, exits after its drain, restarts and is ready
  (and UP in HAProxy) before the next one goes.

No client-side retries: every failure a client sees is counted. tests/integration/ops/ imports
this module and asserts zero failed unary requests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from nereid.proto import grpc_service_pb2, grpc_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
MODEL = "add_sub"
NEREID = shutil.which("nereid") or str(Path(sys.executable).with_name("nereid"))
# The example config's ports: three replicas (HTTP, gRPC), the two frontends and the stats page.
EXAMPLE_REPLICA_PORTS = [(8000, 8001), (8100, 8101), (8200, 8201)]
EXAMPLE_FRONTEND_PORTS = {"http": 9000, "grpc": 9001, "stats": 8404}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of a GET, or None when nothing answered in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass
class Replica:
    """One ``nereid serve`` process; restarts keep its ports."""

    name: str
    repository: Path
    log_dir: Path
    extra_args: list[str] = field(default_factory=list)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            NEREID,
            "serve",
            f"--model-repository={self.repository}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            *self.extra_args,
        ]
        log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def ready_status(self) -> int | None:
        return http_status(f"http://127.0.0.1:{self.http_port}/v2/health/ready")

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            return self.ready_status() == 200

        wait_for(ready, timeout, f"{self.name} to be ready")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the drain to end; returns the exit status."""
        self.signal(signal.SIGTERM)
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def render_haproxy(replicas: list[Replica], frontends: dict[str, int], overrides: dict[str, str]) -> str:
    """The example config with its ports mapped onto ours; ``overrides`` replaces whole directives."""
    ports = {}
    for (http_port, grpc_port), replica in zip(EXAMPLE_REPLICA_PORTS, replicas, strict=True):
        ports[http_port], ports[grpc_port] = replica.http_port, replica.grpc_port
    for key, port in EXAMPLE_FRONTEND_PORTS.items():
        ports[port] = frontends[key]
    text = HAPROXY_CFG.read_text()
    text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text)
    text = re.sub(r"\bport (\d+)\b", lambda m: f"port {ports[int(m.group(1))]}", text)
    for directive, value in overrides.items():
        text, count = re.subn(rf"(?m)^(\s+){re.escape(directive)}\b.*$", rf"\g<1>{directive} {value}", text)
        assert count, f"no '{directive}' in {HAPROXY_CFG}"
    return text


class Balancer:
    """HAProxy in the foreground, with the example config; ``status`` reads its stats page."""

    def __init__(self, replicas: list[Replica], work: Path, overrides: dict[str, str] | None = None) -> None:
        self.ports = {key: free_port() for key in EXAMPLE_FRONTEND_PORTS}
        self.config = work / "haproxy.cfg"
        self.config.write_text(render_haproxy(replicas, self.ports, overrides or {}))
        self.log = work / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy; `make test` does)")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: http_status(self.stats_url) == 200, 10, "haproxy's stats page")

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['stats']}/stats;csv"

    def status(self) -> dict[tuple[str, str], dict[str, str]]:
        """(backend, server) → that row of HAProxy's CSV stats (status, stot, ...)."""
        with urllib.request.urlopen(self.stats_url, timeout=2) as response:
            lines = response.read().decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {(r["pxname"], r["svname"]): r for r in rows}

    def server_status(self, server: str, backend: str = "be_http") -> str:
        return self.status()[(backend, server)]["status"]

    def wait_status(self, server: str, wanted: str, timeout: float = 20) -> None:
        def reached() -> bool:
            # Every backend the server is in (the sticky one too: its consistent hash moves when a
            # server's state changes, so a check that skips it lets a session switch replicas).
            rows = self.status()
            backends = [b for (b, name) in rows if name == server]
            return bool(backends) and all(rows[(b, server)]["status"].startswith(wanted) for b in backends)

        wait_for(reached, timeout, f"haproxy to see {server} {wanted}", interval=0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class Tally:
    """What one protocol's workers saw in one phase."""

    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, began: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.latencies_ms.append((time.perf_counter() - began) * 1000)
            else:
                self.failures.append(error)

    def summary(self) -> dict[str, float | int | list[str]]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        total = len(self.latencies_ms) + len(self.failures)
        return {
            "requests": total,
            "failed": len(self.failures),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "rps": round(total / self.seconds, 1) if self.seconds else 0.0,
            "failures": sorted(set(self.failures))[:5],
        }


_INPUT = np.arange(16, dtype=np.float32).reshape(1, 16)
HTTP_BODY = json.dumps(
    {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "FP32", "data": _INPUT.ravel().tolist()}
            for n in ("INPUT0", "INPUT1")
        ]
    }
).encode()


def _http_worker(port: int, tally: Tally, stop: threading.Event, think_s: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    path = f"/v2/models/{MODEL}/infer"
    while not stop.is_set():
        began = time.perf_counter()
        try:
            conn.request("POST", path, HTTP_BODY, {"content-type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            error = None if response.status == 200 else f"HTTP {response.status}: {body[:120]!r}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            conn.close()
        tally.record(began, error)
        time.sleep(think_s)
    conn.close()


def _grpc_worker(port: int, tally: Tally, stop: threading.Event, think_s: float) -> None:
    request = grpc_service_pb2.ModelInferRequest(model_name=MODEL)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(_INPUT.tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            began = time.perf_counter()
            try:
                stub.ModelInfer(request, timeout=30)
                error = None
            except grpc.RpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            tally.record(began, error)
            time.sleep(think_s)


@contextmanager
def load(
    balancer: Balancer, http_workers: int, grpc_workers: int, think_s: float, max_seconds: float = 120
) -> Iterator[dict[str, Tally]]:
    """Run the workers for the body of the ``with``; they stop on exit (or after ``max_seconds``)."""
    tallies = {"http": Tally(), "grpc": Tally()}
    stop = threading.Event()
    threads = [
        threading.Thread(target=_http_worker, args=(balancer.ports["http"], tallies["http"], stop, think_s))
        for _ in range(http_workers)
    ] + [
        threading.Thread(target=_grpc_worker, args=(balancer.ports["grpc"], tallies["grpc"], stop, think_s))
        for _ in range(grpc_workers)
    ]
    guard = threading.Timer(max_seconds, stop.set)  # the load never outlives a stuck scenario
    guard.daemon = True
    began = time.monotonic()
    guard.start()
    for thread in threads:
        thread.daemon = True
        thread.start()
    try:
        yield tallies
    finally:
        stop.set()
        guard.cancel()
        for thread in threads:
            thread.join(35)
        for tally in tallies.values():
            tally.seconds = time.monotonic() - began


class Cluster:
    """Three replicas and HAProxy, started together; ``close`` stops everything it started."""

    def __init__(
        self,
        repository: Path,
        work: Path,
        replica_args: list[str] | None = None,
        haproxy_overrides: dict[str, str] | None = None,
    ) -> None:
        self.replicas = [Replica(f"r{i}", repository, work, list(replica_args or [])) for i in (1, 2, 3)]
        self.balancer = Balancer(self.replicas, work, haproxy_overrides)

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()
        for replica in self.replicas:
            replica.wait_ready()
        self.balancer.start()
        for replica in self.replicas:
            self.balancer.wait_status(replica.name, "UP")

    def restart(self, replica: Replica) -> None:
        replica.start()
        replica.wait_ready()
        self.balancer.wait_status(replica.name, "UP")

    def close(self) -> None:
        self.balancer.stop()
        for replica in self.replicas:
            replica.stop()


def run_phases(cluster: Cluster, seconds: float, http_workers: int, grpc_workers: int, think_s: float):
    """The three phases; returns {phase: {protocol: summary}}."""
    results = {}
    with load(cluster.balancer, http_workers, grpc_workers, think_s) as tallies:
        time.sleep(seconds)
    results["baseline"] = {k: t.summary() for k, t in tallies.items()}

    victim = cluster.replicas[1]
    with load(cluster.balancer, http_workers, grpc_workers, think_s) as tallies:
        time.sleep(seconds / 3)
        victim.kill()
        cluster.balancer.wait_status(victim.name, "DOWN")
        cluster.restart(victim)
        time.sleep(seconds / 3)
    results["kill"] = {k: t.summary() for k, t in tallies.items()}

    with load(cluster.balancer, http_workers, grpc_workers, think_s) as tallies:
        for replica in cluster.replicas:
            code = replica.terminate()
            if code != 0:
                raise RuntimeError(f"{replica.name} exited with {code} after SIGTERM")
            cluster.restart(replica)
    results["rolling"] = {k: t.summary() for k, t in tallies.items()}
    return results


def format_table(results: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| phase | protocol | requests | failed | p50 ms | p99 ms | req/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase, by_protocol in results.items():
        for protocol, s in by_protocol.items():
            lines.append(
                f"| {phase} | {protocol} | {s['requests']} | {s['failed']} | {s['p50_ms']} | "
                f"{s['p99_ms']} | {s['rps']} |"
            )
    failures = [
        f"{p}/{proto}: {s['failures']}" for p, r in results.items() for proto, s in r.items() if s["failed"]
    ]
    return "\n".join([*lines, f"failures seen: {'; '.join(failures) or 'none'}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the baseline and kill phases")
    parser.add_argument("--http-workers", type=int, default=4)
    parser.add_argument("--grpc-workers", type=int, default=2)
    parser.add_argument("--think-ms", type=float, default=2.0, help="pause between a worker's requests")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nereid-failover-") as tmp:
        cluster = Cluster(
            args.model_repository, Path(tmp), ["--model-control-mode=explicit", f"--load-model={MODEL}"]
        )
        try:
            cluster.start()
            results = run_phases(
                cluster, args.seconds, args.http_workers, args.grpc_workers, args.think_ms / 1000
            )
        finally:
            cluster.close()
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
