"""run_load and ``nereid bench`` against a real server: every transport completes without errors."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

from nereid.clients.bench import main as bench_main
from nereid.clients.loadgen import run_load

GRPC = importlib.util.find_spec("nereid.server.grpc.server") is not None
ROW_FIELDS = {"mode", "level", "duration_s", "completed", "errors", "throughput", "latency", "error_messages"}
LATENCY_FIELDS = {"count", "mean_us", "p50_us", "p90_us", "p95_us", "p99_us", "min_us", "max_us"}


@pytest.fixture(scope="module")
def server(module_repo, start_module_server):
    module_repo.add_sub()
    return start_module_server(module_repo.root)


def _load(target: str, **options):
    return asyncio.run(run_load(target, "add_sub", duration=1.0, warmup=0.2, **options))


def _check(result, levels):
    _check_document(json.loads(json.dumps(result.to_dict())), levels)


def _check_document(document, levels):
    assert {"target", "protocol", "model", "batch_size", "shapes", "started", "rows", "machine"} <= set(
        document
    )
    assert [row["level"] for row in document["rows"]] == levels
    for row in document["rows"]:
        assert set(row) >= ROW_FIELDS
        assert row["errors"] == 0, row["error_messages"]
        assert row["completed"] > 0
        assert set(row["latency"]) >= LATENCY_FIELDS


@pytest.mark.parametrize(
    ("protocol", "http_client"),
    [("http", "raw"), ("http-json", "raw"), ("http", "aiohttp"), ("http-json", "aiohttp")],
)
def test_http_transports_complete_without_errors(server, protocol, http_client):
    result = _load(server.http_url, protocol=protocol, http_client=http_client, concurrency=[1, 4])
    assert result.shapes == {"INPUT0": [1, 16], "INPUT1": [1, 16]}
    _check(result, [1, 4])


@pytest.mark.skipif(not GRPC, reason="no gRPC front-end (nereid.server.grpc.server) yet")
def test_grpc_completes_without_errors(server):
    _check(_load(server.grpc_url, protocol="grpc", concurrency=[2]), [2])


def test_request_rate_and_batching(server):
    result = _load(server.http_url, request_rate=[50], batch_size=4)
    _check(result, [50.0])
    assert result.shapes["INPUT0"] == [4, 16]
    assert result.rows[0].send_rate is not None


def test_input_data_file(server, tmp_path):
    path = tmp_path / "data.json"
    entries = [{"INPUT0": [float(i)] * 16, "INPUT1": list(range(16))} for i in range(3)]
    path.write_text(json.dumps({"data": entries}))
    _check(_load(server.http_url, input_data=path, concurrency=[2]), [2])


def test_server_errors_are_counted_not_raised(server):
    result = _load(server.http_url, shapes={"INPUT0": [15], "INPUT1": [15]}, concurrency=[2])
    row = result.rows[0]
    assert row.completed == 0 and row.errors > 0
    assert all(message.startswith("HTTP 400") for message in row.error_messages)


def test_cli_writes_the_json_report(server, tmp_path, capsys):
    out = tmp_path / "out.json"
    argv = ["-m", "add_sub", "-u", server.http_url, "--concurrency", "1,2", "--duration", "0.5"]
    assert bench_main([*argv, "--warmup", "0.1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "Concurrency" in table and "p99 us" in table
    _check_document(json.loads(out.read_text()), [1, 2])


def test_cli_reports_an_unknown_model(server, capsys):
    assert bench_main(["-m", "nope", "-u", server.http_url, "--duration", "0.2", "-q"]) == 2
    assert "nope" in capsys.readouterr().err
