"""Graceful drain as a load balancer and a direct client see it, on a real `nereid serve` process."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from nereid.proto import grpc_service_pb2, grpc_service_pb2_grpc

BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
).encode()


def start(failover, replicas, root, tmp_path, *args: str):
    replica = failover.Replica(f"n{len(replicas)}", root, tmp_path, list(args))
    replicas.append(replica)
    replica.start()
    replica.wait_ready()
    return replica


def http_infer(port: int, model: str, conn: http.client.HTTPConnection | None = None):
    own = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    own.request("POST", f"/v2/models/{model}/infer", BODY, {"content-type": "application/json"})
    response = own.getresponse()
    response.read()
    return response


def grpc_infer(port: int, model: str) -> grpc.StatusCode:
    request = grpc_service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_ready_turns_false_first_and_listeners_close_only_after_the_delay(
    failover, replicas, repo, tmp_path, write_slow_model
):
    write_slow_model(repo.root, "quick", delay_s=0)
    replica = start(failover, replicas, repo.root, tmp_path, "--drain-delay-secs=1.5")
    idle = http.client.HTTPConnection("127.0.0.1", replica.http_port, timeout=10)
    assert http_infer(replica.http_port, "quick", idle).status == 200  # now an idle keep-alive

    began = time.monotonic()
    replica.signal(signal.SIGTERM)
    failover.wait_for(lambda: replica.ready_status() == 503, 0.5, "readiness to drop")
    # The balancer has not seen it yet: the idle connection and new ones are still served,
    # and each response asks the client to close.
    kept = http_infer(replica.http_port, "quick", idle)
    assert kept.status == 200 and kept.getheader("connection") == "close"
    assert grpc_infer(replica.grpc_port, "quick") == grpc.StatusCode.OK
    assert http_infer(replica.http_port, "quick").status == 200
    assert time.monotonic() - began < 1.5

    failover.wait_for(lambda: refused(replica.http_port), 5, "the listener to close")
    assert time.monotonic() - began >= 1.4
    assert replica.process.wait(10) == 0


def test_in_flight_calls_and_long_batches_finish_when_hit_directly(
    failover, replicas, repo, tmp_path, write_slow_model
):
    """16 gRPC calls and 8 HTTP requests in 1.5 s batches are in flight at SIGTERM: none fails."""
    write_slow_model(
        repo.root,
        "batched",
        delay_s=1.5,
        max_batch_size=32,
        extra="dynamic_batching { max_queue_delay_microseconds: 200000 }",
    )
    replica = start(failover, replicas, repo.root, tmp_path, "--drain-delay-secs=0", "--exit-timeout-secs=20")
    with ThreadPoolExecutor(24) as pool:
        grpc_calls = [pool.submit(grpc_infer, replica.grpc_port, "batched") for _ in range(16)]
        http_calls = [pool.submit(lambda: http_infer(replica.http_port, "batched").status) for _ in range(8)]
        time.sleep(0.5)
        replica.signal(signal.SIGTERM)
        assert [f.result(30) for f in grpc_calls] == [grpc.StatusCode.OK] * 16
        assert [f.result(30) for f in http_calls] == [200] * 8
    assert replica.process.wait(20) == 0


def test_exit_timeout_is_enforced_on_a_model_that_never_returns(
    failover, replicas, repo, tmp_path, write_slow_model
):
    write_slow_model(repo.root, "stuck", delay_s=600)
    replica = start(failover, replicas, repo.root, tmp_path, "--drain-delay-secs=0", "--exit-timeout-secs=2")
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(http_infer(replica.http_port, "stuck").status)
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    time.sleep(0.5)
    began = time.monotonic()
    replica.signal(signal.SIGTERM)
    code = replica.process.wait(15)
    assert time.monotonic() - began < 2 + 3, "exited well past --exit-timeout-secs"
    assert code == 1  # work was abandoned, and the status says so
    caller.join(5)
    assert outcome and outcome[0] != 200


def test_a_second_signal_skips_the_rest_of_the_drain(failover, replicas, repo, tmp_path, write_slow_model):
    write_slow_model(repo.root, "quick", delay_s=0)
    replica = start(failover, replicas, repo.root, tmp_path, "--drain-delay-secs=30")
    replica.signal(signal.SIGTERM)
    failover.wait_for(lambda: replica.ready_status() == 503, 1, "readiness to drop")
    began = time.monotonic()
    replica.signal(signal.SIGINT)
    replica.process.wait(10)
    assert time.monotonic() - began < 5
