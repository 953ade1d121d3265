from __future__ import annotations

from pathlib import Path

import pytest

from nereid.server.settings import parse_settings


def test_flags_use_triton_names():
    s = parse_settings(
        [
            "--model-repository",
            "/m",
            "--http-port",
            "9000",
            "--strict-readiness=false",
            "--exit-on-error",
            "false",
            "--log-verbose",
            "1",
            "--load-model",
            "a",
            "--load-model",
            "b",
        ]
    )
    assert s.model_repository == [Path("/m")]
    assert s.http_port == 9000 and s.grpc_port == 8001 and s.metrics_port == 8002
    assert s.strict_readiness is False and s.exit_on_error is False and s.log_verbose == 1
    assert s.load_model == ["a", "b"]
    assert s.http_max_input_size == 64 * 1024 * 1024


def test_environment_variables(monkeypatch):
    monkeypatch.setenv("NEREID_MODEL_REPOSITORY", "/a,/b")
    monkeypatch.setenv("NEREID_HTTP_PORT", "7000")
    monkeypatch.setenv("NEREID_STRICT_READINESS", "false")
    s = parse_settings([])
    assert s.model_repository == [Path("/a"), Path("/b")]
    assert s.http_port == 7000 and s.strict_readiness is False
    assert parse_settings(["--http-port", "7001"]).http_port == 7001  # flags win


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "--model-repository is required"),
        (["--model-repository", "m", "--http-port", "70000"], "outside"),
        (["--model-repository", "m", "--model-control-mode", "watch"], "model-control-mode"),
        (["--model-repository", "m", "--log-verbose", "-1"], "--log-verbose must not be negative"),
    ],
)
def test_invalid_settings(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_settings(argv)


def test_bad_boolean_is_a_usage_error():
    with pytest.raises(SystemExit):
        parse_settings(["--model-repository", "m", "--strict-readiness", "maybe"])


def test_lifecycle_flags():
    s = parse_settings(
        [
            "--model-repository",
            "/m",
            "--model-control-mode",
            "poll",
            "--repository-poll-secs",
            "2.5",
            "--model-memory-budget",
            "1000000",
        ]
    )
    assert (s.model_control_mode, s.repository_poll_secs, s.model_memory_budget) == ("poll", 2.5, 1_000_000)
    for bad in (["--repository-poll-secs", "0"], ["--model-memory-budget", "-1"]):
        with pytest.raises(ValueError):
            parse_settings(["--model-repository", "/m", *bad])
