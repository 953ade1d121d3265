"""The floor of a Python gRPC server: ModelInfer answered with a canned reply, no model, no queue.

Serve one design:

    python bench/grpc_floor.py serve DESIGN PORT

Compare designs with one client, alternating rounds, server CPU and context switches per call:

    python bench/grpc_floor.py compare --designs aio,sync4,sync16 --rounds 2 --concurrency 8,32

Designs (every one takes raw request bytes and returns raw reply bytes, as Nereid's handlers do):

- ``aio``: grpc.aio on uvloop (what Nereid runs); ``aio-asyncio``: the same on asyncio's loop;
- ``syncN``: the thread-based ``grpc.server`` with a ThreadPoolExecutor of N workers;
- ``syncN-maxM``: the same with ``maximum_concurrent_rpcs=M``;
- ``syncN-lat``: the same with ``grpc.optimization_target=latency`` and ``grpc.http2.bdp_probe=0``;
- ``syncN-loop``: the same, each call handing its work to an event loop thread and waiting for it
  (what Nereid's asyncio core would need behind a thread-based server);
- ``syncN-cb``: the same, but the reply made in a plain callback on the loop, the worker waiting on a
  lock (the least any hand-off to the loop can cost: no task, no future);
- ``grpclib``: grpclib on h2 (pure Python), not a dependency: install ``grpclib`` (and ``h2``) into
  a scratch directory on ``PYTHONPATH`` to compare.

See "Issue 18: gRPC server designs" in bench/RESULTS.md for the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nereid.proto import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


def reply(raw: bytes) -> bytes:
    req = pb.ModelInferRequest.FromString(raw)
    r = pb.ModelInferResponse(model_name=req.model_name, id=req.id)
    r.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 16])
    r.raw_output_contents.append(req.raw_input_contents[0] if req.raw_input_contents else b"\0" * 64)
    return r.SerializeToString()


def metadata(raw: bytes) -> bytes:
    T = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name="identity",
        versions=["1"],
        platform="python",
        inputs=[T(name="INPUT0", datatype="FP32", shape=[-1, 16])],
        outputs=[T(name="OUTPUT0", datatype="FP32", shape=[-1, 16])],
    ).SerializeToString()


def _generic_handler(infer: Any, meta: Any) -> Any:
    import grpc

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
            "ModelMetadata": grpc.unary_unary_rpc_method_handler(meta),
        },
    )


async def main_aio(port: int) -> None:
    import grpc

    async def infer(raw: bytes, context: Any) -> bytes:
        return reply(raw)

    async def meta(raw: bytes, context: Any) -> bytes:
        return metadata(raw)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_generic_handler(infer, meta),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main_sync(
    port: int, workers: int, max_rpcs: int | None, options: list[tuple[str, Any]], on_loop: bool | str = False
) -> None:
    """The thread-based server; ``on_loop``: each call awaits its reply on an event loop thread, as
    Nereid's core would need (the canned reply made by a coroutine there)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import uvloop

    def infer(raw: bytes, context: Any) -> bytes:
        return reply(raw)

    if on_loop is True:
        loop = uvloop.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        async def answer(raw: bytes) -> bytes:
            return reply(raw)

        def infer(raw: bytes, context: Any) -> bytes:
            return asyncio.run_coroutine_threadsafe(answer(raw), loop).result()

    if on_loop == "cb":
        loop = uvloop.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        def infer(raw: bytes, context: Any) -> bytes:
            # The least a hand-off can cost: one callback on the loop, one lock released from it.
            lock, box = threading.Lock(), []
            lock.acquire()

            def run() -> None:
                box.append(reply(raw))
                lock.release()

            loop.call_soon_threadsafe(run)
            lock.acquire()
            return box[0]

    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers), maximum_concurrent_rpcs=max_rpcs, options=options
    )
    server.add_generic_rpc_handlers((_generic_handler(infer, lambda r, c: metadata(r)),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def main_grpclib(port: int) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    class Svc:
        async def infer(self, stream: Any) -> None:
            await stream.send_message(reply(await stream.recv_message()))

        async def meta(self, stream: Any) -> None:
            await stream.send_message(metadata(await stream.recv_message()))

        def __mapping__(self) -> dict[str, Any]:
            raw = Cardinality.UNARY_UNARY
            return {
                f"/{SERVICE}/ModelMetadata": Handler(self.meta, raw, None, None),
                f"/{SERVICE}/ModelInfer": Handler(self.infer, raw, None, None),
            }

    server = Server([Svc()], codec=_RawCodec())
    await server.start("127.0.0.1", port)
    await server.wait_closed()


class _RawCodec:
    """grpclib codec passing bytes through (grpclib's ProtoCodec wants message types)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


def serve(design: str, port: int) -> None:
    if design in ("aio", "aio-asyncio"):
        if design == "aio":
            import uvloop

            uvloop.run(main_aio(port))
        else:
            asyncio.run(main_aio(port))
        return
    if design == "grpclib":
        import uvloop

        uvloop.run(main_grpclib(port))
        return
    m = re.fullmatch(r"sync(\d+)(?:-max(\d+))?(-lat)?(-loop|-cb)?", design)
    if not m:
        raise SystemExit(f"unknown design {design!r}")
    options = [("grpc.optimization_target", "latency"), ("grpc.http2.bdp_probe", 0)] if m[3] else []
    main_sync(
        port, int(m[1]), int(m[2]) if m[2] else None, options, on_loop="cb" if m[4] == "-cb" else bool(m[4])
    )


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of ``pid`` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # a thread that ended
        total += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", text))
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(design: str, concurrency: list[int], duration: float, warmup: float) -> list[dict[str, float]]:
    """Start ``design``, drive it at each concurrency; per row: calls/s, server CPU µs and switches per call."""
    from nereid.clients.loadgen import process_cpu, run_load

    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "serve", design, str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{design} did not start") from None
                time.sleep(0.1)
        cpu = process_cpu(proc.pid)
        marks: list[int] = []

        def reader() -> float:
            marks.append(context_switches(proc.pid))
            return cpu()

        result = asyncio.run(
            run_load(
                f"127.0.0.1:{port}",
                "identity",
                protocol="grpc",
                concurrency=concurrency,
                duration=duration,
                warmup=warmup,
                shapes={"INPUT0": [16]},
                server_cpu=reader,
            )
        )
        rows = []
        for i, row in enumerate(result.rows):
            switches = (marks[2 * i + 1] - marks[2 * i]) / max(row.completed, 1)
            rows.append(
                {
                    "c": row.level,
                    "rps": row.throughput,
                    "cpu_us": row.server_cpu_us or 0.0,
                    "switches": switches,
                }
            )
        return rows
    finally:
        proc.terminate()
        proc.wait(10)


def compare(designs: list[str], rounds: int, concurrency: list[int], duration: float, warmup: float) -> None:
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for r in range(rounds):
        for design in designs:
            for row in measure(design, concurrency, duration, warmup):
                print(
                    f"round {r + 1}  {design:<14} c={row['c']:<3g} {row['rps']:7.0f} calls/s  "
                    f"server {row['cpu_us']:5.0f} us/call  {row['switches']:5.2f} ctx switches/call",
                    flush=True,
                )
        print(f"load average {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("design")
    s.add_argument("port", type=int)
    c = sub.add_parser("compare")
    c.add_argument("--designs", default="aio,sync1,sync4,sync16")
    c.add_argument("--rounds", type=int, default=2)
    c.add_argument("--concurrency", default="8,32")
    c.add_argument("--duration", type=float, default=2.0)
    c.add_argument("--warmup", type=float, default=0.5)
    a = p.parse_args()
    if a.cmd == "serve":
        serve(a.design, a.port)
    else:
        levels = [int(x) for x in a.concurrency.split(",")]
        compare(a.designs.split(","), a.rounds, levels, a.duration, a.warmup)


if __name__ == "__main__":
    main()
