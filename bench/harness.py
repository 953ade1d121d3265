"""Shared by bench/batching.py and bench/vs_triton.py: start Nereid or Triton, drive one load level.

Both servers run as subprocesses (in their own session, so a stop takes their children with them)
on free loopback ports, and answer the same KServe v2 HTTP and gRPC APIs, so one load generator
(:func:`nereid.clients.loadgen.run_load`) and one statistics reader serve both.

Triton comes from the ``nvidia-pytriton`` wheel, which ships the real ``tritonserver`` binary, the
Python backend and a Python backend stub per Python version. :func:`prepare_triton` downloads the
wheel with ``pip download`` into ``bench/.triton/`` (git-ignored) and unpacks it; nothing is
installed into the environment. The stub of Triton 2.51 reads numpy arrays through the numpy 1.x
ABI: with numpy 2 every output of a Python model arrives with 0 bytes ("output tensor shape does
not match size of output"). So the stub gets its own small virtual environment with ``numpy<2``
in ``bench/.triton/stub-env`` (the model files Triton runs need nothing else).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nereid.clients.loadgen import run_load
from nereid.clients.report import Row

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "bench" / "models"
TRITON_HOME = ROOT / "bench" / ".triton"
PYTRITON_VERSION = "0.7.0"  # tritonserver 2.51.0; a manylinux_2_35 wheel (glibc >= 2.35)
#: Inputs with a variable dimension get this shape after the batch dimension.
SHAPES = {
    "identity": {"INPUT0": [16]},
    "sleep5ms": {"INPUT0": [16]},
    "add_sub": {},
    "ensemble3": {"INPUT0": [16]},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu(pid: int) -> Callable[[], float]:
    """CPU seconds (user + system) used by ``pid`` and its live descendants.

    Triton's Python backend runs each instance in a stub process, so its cost is the
    server's and its stubs'; a Nereid server with in-process instances has no children.
    """
    tick = os.sysconf("SC_CLK_TCK")

    def one(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick

    def children(p: int) -> list[int]:
        found: list[int] = []
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            return found
        for task in tasks:
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
        return found

    def read() -> float:
        total, todo = 0.0, [pid]
        while todo:
            p = todo.pop()
            total += one(p)
            todo += children(p)
        return total

    read()
    return read


class ServerProcess:
    """A server subprocess on free loopback ports, ready when ``/v2/health/ready`` answers 200."""

    name = "server"

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, pin: set[int] | None = None
    ) -> None:
        self.args = args
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"{self.name}-bench-", suffix=".log")  # noqa: SIM115
        affinity = (lambda: os.sched_setaffinity(0, pin)) if pin else None
        self.proc = subprocess.Popen(
            args,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
            preexec_fn=affinity,
        )

    http: str = ""
    grpc: str = ""

    def target(self, protocol: str) -> str:
        return self.grpc if protocol == "grpc" else self.http

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.http}{path}", timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                self.get("/v2/health/ready")
                host, port = self.grpc.rsplit(":", 1)
                socket.create_connection((host, int(port)), timeout=1).close()  # gRPC may start later
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f}s:\n{self.output()}")

    def counts(self, model: str) -> tuple[int, int, int, int]:
        """``(inference_count, execution_count, queue ns, queue count)`` from the statistics extension."""
        stats = self.get(f"/v2/models/{model}/stats")["model_stats"][0]
        queue = stats["inference_stats"]["queue"]
        return (
            int(stats["inference_count"]),
            int(stats["execution_count"]),
            int(queue["ns"]),
            int(queue["count"]),
        )

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        """SIGINT (graceful), then SIGKILL to the server's whole process group after 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # stubs or workers the server left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


class Nereid(ServerProcess):
    name = "nereid"

    def __init__(
        self,
        models: Sequence[str],
        repository: Path = MODELS,
        pin: set[int] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        http, grpc, metrics = free_port(), free_port(), free_port()
        self.http, self.grpc, self.metrics = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}"
        args = [
            sys.executable, "-m", "nereid.server.cli", "serve",
            f"--model-repository={repository}",
            "--http-address=127.0.0.1", f"--http-port={http}", f"--grpc-port={grpc}",
            f"--metrics-port={metrics}", "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in models),
            *extra,
        ]  # fmt: skip
        super().__init__(args, pin=pin)


@dataclass(frozen=True)
class TritonDist:
    """An unpacked pytriton wheel: where ``tritonserver``, its backends and libraries are."""

    root: Path  # the folder holding pytriton/ and nvidia_pytriton.libs/

    @property
    def server_dir(self) -> Path:
        return self.root / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.server_dir / "backends"

    @property
    def libs(self) -> Path:
        return self.root / "nvidia_pytriton.libs"

    @property
    def stub_env(self) -> Path:
        """The virtual environment the Python backend stub embeds (numpy<2; see the module docstring)."""
        return self.root.parent / "stub-env"

    def version(self) -> str:
        for info in self.root.glob("nvidia_pytriton-*.dist-info"):
            return info.name.removeprefix("nvidia_pytriton-").removesuffix(".dist-info")
        return "?"


def prepare_triton(download: bool = True, home: Path = TRITON_HOME) -> TritonDist:
    """Find (or download and unpack) pytriton's Triton, with the stub for this Python in place.

    Raises RuntimeError with the reason when Triton cannot be made ready here.
    """
    root = home / "wheel"
    dist = TritonDist(root)
    if not dist.binary.is_file():
        if not download:
            raise RuntimeError(f"no tritonserver under {root}; run without --no-download to fetch it")
        home.mkdir(parents=True, exist_ok=True)
        wheels = sorted(home.glob(f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"))
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(home)]
            subprocess.run([*cmd, f"nvidia-pytriton=={PYTRITON_VERSION}"], check=True)
            wheels = sorted(home.glob(f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download left no nvidia_pytriton-{PYTRITON_VERSION} wheel in {home}")
        shutil.rmtree(root, ignore_errors=True)
        with zipfile.ZipFile(wheels[-1]) as wheel:
            members = [
                n for n in wheel.namelist() if n.startswith(("pytriton/tritonserver/", "nvidia_pytriton"))
            ]
            wheel.extractall(root, members)
    dist.binary.chmod(0o755)
    # As pytriton's own launcher does: the stub for this interpreter's version, beside the backend.
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist.server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"pytriton {dist.version()} ships no Python backend stub for Python {version}")
    target = dist.backends / "python" / "triton_python_backend_stub"
    if not target.is_file() or target.stat().st_size != stub.stat().st_size:
        shutil.copy(stub, target)
    target.chmod(0o755)
    _stub_env(dist.stub_env, download)
    return dist


def _stub_env(env: Path, download: bool) -> None:
    """A venv of this interpreter with numpy<2, for the stub (made once)."""
    python = env / "bin" / "python"
    check = [str(python), "-c", "import numpy, sys; sys.exit(numpy.__version__ >= '2')"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return
    if not download:
        raise RuntimeError(f"no numpy<2 environment for the Triton stub at {env}; run without --no-download")
    shutil.rmtree(env, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(env)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy<2"], check=True)


def triton_env(dist: TritonDist) -> dict[str, str]:
    """The environment pytriton gives ``tritonserver`` (``pytriton/server/triton_server.py``).

    - ``LD_LIBRARY_PATH``: the wheel's bundled libraries, and the directory of this interpreter's
      ``libpython3.X.so.1.0``, which the stub links against (the stub's RPATH points at the
      wheel's libs folder, which has only pytriton's own libpython);
    - ``PATH``: the stub's environment's ``bin`` first. The stub embeds Python without setting a
      program name, so Python looks up ``python3`` on ``PATH``, finds that venv's ``pyvenv.cfg``
      and therefore its site-packages (numpy<2).
    """
    env = dict(os.environ)
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(dist.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(d for d in libdirs if d)
    env["PATH"] = f"{dist.stub_env / 'bin'}:{env.get('PATH', '')}"
    return env


class Triton(ServerProcess):
    name = "triton"

    def __init__(
        self, dist: TritonDist, models: Sequence[str], repository: Path = MODELS, pin: set[int] | None = None
    ) -> None:
        http, grpc, metrics = free_port(), free_port(), free_port()
        self.http, self.grpc, self.metrics = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}"
        args = [
            str(dist.binary),
            f"--model-repository={repository}", f"--backend-directory={dist.backends}",
            f"--cache-directory={dist.server_dir / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={http}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
            f"--metrics-port={metrics}", "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in models),
            "--log-verbose=0",
        ]  # fmt: skip
        super().__init__(args, env=triton_env(dist), pin=pin)


def libpython_available() -> str | None:
    """Why the stub cannot load this interpreter's shared library, or None when it can."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    name = sysconfig.get_config_var("INSTSONAME") or ""
    if not name or not (Path(libdir) / name).exists():
        return f"this Python has no shared libpython ({libdir}/{name}); the stub links against one"
    return None


@dataclass
class Measured:
    """One load level on one server: the load generator's row plus the batching it caused."""

    row: Row
    inferences: int  # inference_count delta over warmup + window
    executions: int  # execution_count delta over warmup + window
    queue_ns: int = 0  # inference_stats.queue.ns delta: time requests waited for an instance
    queued: int = 0  # inference_stats.queue.count delta

    @property
    def avg_batch(self) -> float:
        return self.inferences / self.executions if self.executions else 0.0

    @property
    def queue_us(self) -> float:
        """Mean queue wait per request (µs), as the server's statistics count it."""
        return self.queue_ns / self.queued / 1000 if self.queued else 0.0


def measure(
    server: ServerProcess,
    model: str,
    protocol: str,
    concurrency: int,
    duration: float,
    warmup: float,
    progress: Callable[[str], None] | None = None,
) -> Measured:
    """One closed-loop level (``concurrency`` requests outstanding), with the statistics delta."""
    before = server.counts(model)
    coroutine = run_load(
        server.target(protocol),
        model,
        protocol=protocol,
        concurrency=[concurrency],
        duration=duration,
        warmup=warmup,
        shapes=SHAPES.get(model, {}),
        progress=progress,
        server_cpu=tree_cpu(server.proc.pid),
    )
    result = _runner(protocol)(coroutine)
    after = server.counts(model)
    delta = [a - b for a, b in zip(after, before, strict=True)]
    return Measured(result.rows[0], *delta)


def _runner(protocol: str) -> Any:
    """uvloop for HTTP, as bench/load.py (the client's CPU is the server's on 2 cores); asyncio for gRPC."""
    if protocol != "grpc":
        try:
            import uvloop

            return uvloop.run
        except ImportError:
            pass
    return asyncio.run


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        load = os.getloadavg()
        return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), *map(line, rows)])
