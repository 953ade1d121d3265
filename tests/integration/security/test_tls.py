"""TLS and mutual TLS for HTTP and gRPC with test-time certificates."""

from __future__ import annotations

import ssl
import urllib.request
from urllib.error import URLError

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def _tls(certs, mutual: bool) -> dict[str, object]:
    flags: dict[str, object] = {}
    for name in ("http", "grpc"):
        flags |= {
            f"{name}_use_ssl": True,
            f"{name}_use_ssl_mutual": mutual,
            f"{name}_server_cert": str(certs.server_cert),
            f"{name}_server_key": str(certs.server_key),
            f"{name}_root_cert": str(certs.ca) if mutual else "",
        }
    return flags


def _https(certs, client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client_cert:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def test_tls_round_trips_and_plaintext_fails(security_repo, start_server, certs, kit):
    running = start_server(security_repo.root, **_tls(certs, mutual=False))
    port = running.server.ports["http"]
    with urllib.request.urlopen(
        f"https://127.0.0.1:{port}/v2/health/ready", context=_https(certs, False), timeout=10
    ) as response:
        assert response.status == 200
    c = httpclient.InferenceServerClient(
        running.http_url, ssl=True, ssl_context_factory=lambda: _https(certs, False)
    )
    kit.infer("http", c)
    g = grpcclient.InferenceServerClient(running.grpc_url, ssl=True, root_certificates=str(certs.ca))
    kit.infer("grpc", g)
    with pytest.raises((URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5)
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(running.grpc_url).is_server_live(client_timeout=5)


def test_mutual_tls_needs_a_client_certificate(security_repo, start_server, certs, kit):
    running = start_server(security_repo.root, **_tls(certs, mutual=True))
    port = running.server.ports["http"]
    url = f"https://127.0.0.1:{port}/v2/health/ready"
    with urllib.request.urlopen(url, context=_https(certs, True), timeout=10) as response:
        assert response.status == 200
    with pytest.raises((URLError, ConnectionError, ssl.SSLError)):
        urllib.request.urlopen(url, context=_https(certs, False), timeout=10).read()
    g = grpcclient.InferenceServerClient(
        running.grpc_url,
        ssl=True,
        root_certificates=str(certs.ca),
        private_key=str(certs.client_key),
        certificate_chain=str(certs.client_cert),
    )
    kit.infer("grpc", g)
    anonymous = grpcclient.InferenceServerClient(running.grpc_url, ssl=True, root_certificates=str(certs.ca))
    with pytest.raises(InferenceServerException):
        anonymous.is_server_live(client_timeout=5)


def test_tls_flags_are_validated(tmp_path):
    from nereid.server.settings import parse_settings

    with pytest.raises(ValueError, match="--grpc-use-ssl needs"):
        parse_settings(["--model-repository", str(tmp_path), "--grpc-use-ssl", "true"])
    with pytest.raises(ValueError, match="--http-use-ssl-mutual needs --http-root-cert"):
        parse_settings(
            [
                "--model-repository",
                str(tmp_path),
                "--http-use-ssl-mutual",
                "true",
                "--http-server-cert",
                "c",
                "--http-server-key",
                "k",
            ]
        )
