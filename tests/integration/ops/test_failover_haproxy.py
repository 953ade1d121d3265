"""Three `nereid serve` replicas behind HAProxy running deploy/haproxy/haproxy.cfg, under a bounded load.

Zero failed unary requests through a SIGKILL, a rolling restart, a stuck replica and a replica
that is still loading; session-header requests stay on one replica. bench/failover.py drives
the same code for bench/RESULTS.md.
"""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import time
import urllib.request

import pytest

LOAD = {"http_workers": 3, "grpc_workers": 2, "think_s": 0.003}


@pytest.fixture(scope="module")
def cluster(failover, module_repo, tmp_path_factory, write_slow_model):
    module_repo.add_sub()
    # r3 also loads a model that takes 3 s to initialize: each of its starts has a 503 phase.
    slow_root = tmp_path_factory.mktemp("slow") / "models"
    shutil.copytree(module_repo.root, slow_root)
    write_slow_model(slow_root, "slow_to_load", delay_s=0, load_s=3.0)
    # A stuck replica's in-flight requests are retried after `timeout server`: 3 s here, not 60.
    cluster = failover.Cluster(
        module_repo.root, tmp_path_factory.mktemp("cluster"), haproxy_overrides={"timeout server": "3s"}
    )
    cluster.replicas[2].repository = slow_root
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def _assert_no_failures(tallies) -> None:
    for protocol, tally in tallies.items():
        summary = tally.summary()
        print(f"{protocol}: {summary}")
        assert summary["requests"] > 0
        assert summary["failed"] == 0, f"{protocol}: {summary['failures']}"


def test_kill_and_rolling_restart_lose_no_unary_request(failover, cluster):
    results = failover.run_phases(cluster, seconds=3.0, **LOAD)
    print("\n" + failover.format_table(results))
    for phase, by_protocol in results.items():
        for protocol, summary in by_protocol.items():
            assert summary["requests"] > 0, (phase, protocol)
            assert summary["failed"] == 0, (phase, protocol, summary["failures"])


def test_a_stuck_replica_is_detected_by_the_checks(failover, cluster):
    victim = cluster.replicas[0]
    with failover.load(cluster.balancer, **LOAD) as tallies:
        time.sleep(0.5)
        victim.signal(signal.SIGSTOP)  # listening, accepting, answering nothing
        try:
            cluster.balancer.wait_status(victim.name, "DOWN", timeout=5)
        finally:
            victim.signal(signal.SIGCONT)
        cluster.balancer.wait_status(victim.name, "UP", timeout=10)
        time.sleep(0.5)
    _assert_no_failures(tallies)


def test_a_loading_replica_answers_503_and_gets_no_traffic(failover, cluster):
    loading = cluster.replicas[2]
    with failover.load(cluster.balancer, **LOAD) as tallies:
        loading.kill()
        cluster.balancer.wait_status(loading.name, "DOWN")
        sessions = int(cluster.balancer.status()[("be_http", loading.name)]["stot"])
        loading.start()
        failover.wait_for(lambda: loading.ready_status() == 503, 10, "the 503 phase")
        seen_503 = 0
        while loading.ready_status() == 503:
            seen_503 += 1
            assert cluster.balancer.server_status(loading.name).startswith("DOWN")
            time.sleep(0.2)
        assert seen_503 >= 3  # the load phase lasted at least ~0.6 s
        assert int(cluster.balancer.status()[("be_http", loading.name)]["stot"]) == sessions
        cluster.balancer.wait_status(loading.name, "UP")
    _assert_no_failures(tallies)


def _successes(replica) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^nv_inference_request_success\{model="add_sub",version="1"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_session_header_keeps_requests_on_one_replica(failover, cluster):
    for replica in cluster.replicas:  # an earlier test may have just restarted one
        cluster.balancer.wait_status(replica.name, "UP")
    before = [_successes(r) for r in cluster.replicas]
    conn = http.client.HTTPConnection("127.0.0.1", cluster.balancer.ports["http"], timeout=10)
    for _ in range(20):
        conn.request(
            "POST", "/v2/models/add_sub/infer", failover.HTTP_BODY, {"x-session-id": "conversation-42"}
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    conn.close()
    gained = [_successes(r) - b for r, b in zip(cluster.replicas, before, strict=True)]
    assert sorted(gained) == [0, 0, 20]
