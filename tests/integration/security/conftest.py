"""Security fixtures: a repository with two identity models, key files, and test-time certificates.

Certificates come from the ``openssl`` command (a CA, a server certificate for 127.0.0.1 and
localhost, and a client certificate), made once per session in a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ADMIN, APP, OTHER = "admin-secret-0123456789", "app-secret-0123456789", "other-secret-0123456789"


def key_file(path: Path, keys: list[dict]) -> Path:
    """Write ``keys`` as a key file with a fresh mtime (so the server sees the change)."""
    path.write_text(json.dumps({"keys": keys}))
    later = time.time() + 2
    os.utime(path, (later, later))
    return path


DEFAULT_KEYS = [
    {"name": "admin", "key": ADMIN, "groups": ["*"]},
    {"name": "app", "key": APP, "groups": ["inference", "metadata"], "models": ["identity"]},
]


@pytest.fixture(scope="module")
def security_repo(module_repo):
    module_repo.identity("identity", max_batch_size=0)
    module_repo.identity("private", max_batch_size=0)
    return module_repo


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def client(transport: str, url: str, **kwargs):
    module = httpclient if transport == "http" else grpcclient
    return module.InferenceServerClient(url, **kwargs)


def infer(transport: str, c, model: str = "identity", headers: dict[str, str] | None = None):
    module = httpclient if transport == "http" else grpcclient
    data = np.arange(4, dtype=np.float32)
    tensor = module.InferInput("INPUT0", [4], "FP32")
    tensor.set_data_from_numpy(data)
    result = c.infer(model, [tensor], headers=headers)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    return result


def status(exc: BaseException) -> str:
    """The transport status of a tritonclient error: "401" over HTTP, "StatusCode.X" over gRPC."""
    return str(exc.status())  # type: ignore[attr-defined]


class Kit:
    """The helpers above, handed to tests as the ``kit`` fixture (tests/ has no packages to import)."""

    ADMIN, APP, OTHER, DEFAULT_KEYS = ADMIN, APP, OTHER, DEFAULT_KEYS
    key_file = staticmethod(key_file)
    bearer = staticmethod(bearer)
    client = staticmethod(client)
    infer = staticmethod(infer)
    status = staticmethod(status)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


@pytest.fixture(scope="module")
def module_kit() -> type[Kit]:
    return Kit


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=nereid-test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn, ext in (("server", "localhost", ["-extfile", "san.ext"]), ("client", "nereid-client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.pem", *ext, cwd=d)  # fmt: skip
    return Certificates(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")
