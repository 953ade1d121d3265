"""Per-client rate limits: 429 with Retry-After over HTTP, RESOURCE_EXHAUSTED over gRPC, metrics."""

from __future__ import annotations

import urllib.request
from urllib.error import HTTPError

import pytest
from tritonclient.utils import InferenceServerException


@pytest.fixture
def limited(security_repo, start_server, tmp_path, kit):
    keys = kit.key_file(
        tmp_path / "keys.json",
        [
            {"name": "slow", "key": kit.APP, "groups": ["*"], "requests_per_second": 0.01, "burst": 2},
            {"name": "free", "key": kit.ADMIN, "groups": ["*"], "requests_per_second": 0},
        ],
    )
    return start_server(security_repo.root, api_key_file=str(keys), request_rate_limit=1000.0)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_key_over_its_limit_is_refused_with_a_retry_time(limited, transport, kit):
    url = limited.http_url if transport == "http" else limited.grpc_url
    c = kit.client(transport, url)
    for _ in range(2):  # the burst
        kit.infer(transport, c, headers=kit.bearer(kit.APP))
    with pytest.raises(InferenceServerException) as info:
        kit.infer(transport, c, headers=kit.bearer(kit.APP))
    expected = "429" if transport == "http" else "StatusCode.RESOURCE_EXHAUSTED"
    assert kit.status(info.value) == expected
    assert "rate limit exceeded (requests)" in str(info.value)
    # Health is never limited, and another key has its own bucket (here: no limit).
    assert c.is_server_live()
    for _ in range(5):
        kit.infer(transport, c, headers=kit.bearer(kit.ADMIN))


def test_http_429_has_retry_after_and_is_counted(limited, kit):
    request = urllib.request.Request(f"http://{limited.http_url}/v2/models/identity")
    request.add_header("Authorization", f"Bearer {kit.APP}")
    refusals = 0
    for _ in range(4):
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except HTTPError as exc:
            assert exc.code == 429
            assert int(exc.headers["Retry-After"]) >= 1
            refusals += 1
    assert refusals == 2
    with urllib.request.urlopen(limited.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert 'nereid_rate_limited_total{limit="requests",principal="slow"} 2.0' in text


def test_anonymous_clients_are_limited_by_address(security_repo, start_server, kit):
    running = start_server(security_repo.root, request_rate_limit=0.01, request_rate_burst=1)
    c = kit.client("grpc", running.grpc_url)
    kit.infer("grpc", c)
    with pytest.raises(InferenceServerException, match="rate limit"):
        kit.infer("grpc", c)
    # The address's bucket is shared by both transports.
    with pytest.raises(InferenceServerException, match="rate limit"):
        kit.infer("http", kit.client("http", running.http_url))


def test_openai_token_budget_is_charged_at_admission(security_repo, start_server):
    import openai

    running = start_server(security_repo.root, token_rate_limit=100.0)
    c = openai.OpenAI(base_url=f"http://{running.http_url}/v1", api_key="unused", max_retries=0)
    # 400 bytes of prompt (100 tokens) + 60 max_tokens exceed nothing on their own (capped at
    # the bucket), but leave nothing for the next call.
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="identity", prompt="x" * 400, max_tokens=60)
    with pytest.raises(openai.RateLimitError):
        c.completions.create(model="identity", prompt="hi", max_tokens=10)
