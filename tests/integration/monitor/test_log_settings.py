"""Triton's logging extension: read and change the log settings over HTTP and gRPC; bad values."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from nereid.proto import grpc_service_pb2 as pb
from nereid.proto import grpc_service_pb2_grpc
from nereid.server import logs
from nereid.server.log_settings import LOG_SETTINGS

DEFAULTS = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writes to a buffer through Nereid's own handler; everything is restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure("text", 0, stream)
    LOG_SETTINGS.update(DEFAULTS)
    yield stream
    LOG_SETTINGS.update(DEFAULTS)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def server(repo: Any, start_server: Any, captured: io.StringIO) -> Any:
    repo.identity("identity")
    return start_server(repo.root)


def _grpc(client: grpcclient.InferenceServerClient, **update: Any) -> dict[str, Any]:
    if update:
        answer = client.update_log_settings(settings=update, as_json=True)
    else:
        answer = client.get_log_settings(as_json=True)
    out = {}
    for key, value in answer["settings"].items():
        (kind, given), *_ = value.items()
        out[key] = int(given) if kind == "uint32Param" else given
    return out


def test_http_reads_and_changes_level_and_format(server, captured):
    probe = logging.getLogger("nereid.probe")
    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.get_log_settings() == DEFAULTS
        probe.debug("hidden debug")
        changed = client.update_log_settings({"log_verbose_level": 2, "log_info": False})
        assert changed == {**DEFAULTS, "log_verbose_level": 2, "log_info": False}
        probe.debug("shown debug")
        probe.info("hidden info")
        probe.warning("shown warning")
        assert client.update_log_settings({"log_format": "json"})["log_format"] == "json"
        probe.warning("as json")
        assert client.update_log_settings({"log_format": "ISO8601"})["log_format"] == "ISO8601"
        assert client.update_log_settings({"log_format": "text"})["log_format"] == "default"
        assert client.update_log_settings({"log_file": ""})["log_file"] == ""  # unchanged: allowed
    lines = captured.getvalue().splitlines()
    text = "\n".join(lines)
    assert "shown debug" in text and "shown warning" in text
    assert "hidden debug" not in text and "hidden info" not in text
    record = json.loads(next(line for line in lines if "as json" in line))
    assert record["level"] == "WARNING" and record["logger"] == "nereid.probe"


def test_grpc_reads_and_changes_settings(server, captured):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert _grpc(client) == DEFAULTS
        changed = _grpc(client, log_verbose_level=1, log_warning=False, log_format="ISO8601")
        assert changed == {**DEFAULTS, "log_verbose_level": 1, "log_warning": False, "log_format": "ISO8601"}
        assert _grpc(client)["log_warning"] is False
    logging.getLogger("nereid.probe").warning("muted warning")
    logging.getLogger("nereid.probe").error("loud error")
    assert "muted warning" not in captured.getvalue() and "loud error" in captured.getvalue()


BAD = [
    ({"log_info": "yes"}, "log_info"),
    ({"log_error": 1}, "log_error"),
    ({"log_verbose_level": -1}, "log_verbose_level"),
    ({"log_verbose_level": "2"}, "log_verbose_level"),
    ({"log_verbose_level": True}, "log_verbose_level"),
    ({"log_format": "xml"}, "log_format"),
    ({"log_file": "/tmp/nereid-elsewhere.log"}, "log file location can not be updated"),
    ({"log_info": False, "log_format": "xml"}, "log_format"),  # nothing applied, not even log_info
    ({"log_colour": "blue"}, "unknown log setting 'log_colour'"),
]


@pytest.mark.parametrize(("update", "needle"), BAD)
def test_bad_values_are_refused_over_http_and_change_nothing(server, update, needle):
    url = f"http://{server.http_url}/v2/logging"
    response = httpx.post(url, json=update)
    assert response.status_code == 400 and needle in response.json()["error"]
    assert httpx.get(url).json() == DEFAULTS
    assert httpx.post(url, content=b"[1]").status_code == 400
    assert httpx.put(url).status_code == 405


GRPC_BAD = [
    ({"log_format": "xml"}, "log_format"),
    ({"log_file": "/tmp/nereid-elsewhere.log"}, "log file location can not be updated"),
    ({"log_warning": False, "log_format": "xml"}, "log_format"),
]


@pytest.mark.parametrize(("update", "needle"), GRPC_BAD)
def test_bad_values_are_refused_over_grpc_and_change_nothing(server, update, needle):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.update_log_settings(settings=update)
        assert "INVALID_ARGUMENT" in str(info.value.status()) and needle in info.value.message()
        assert _grpc(client) == DEFAULTS
        assert client.is_server_ready()


WRONG_KINDS = [
    ("log_info", pb.LogSettingsRequest.SettingValue(string_param="yes")),
    ("log_verbose_level", pb.LogSettingsRequest.SettingValue(bool_param=True)),
    ("log_format", pb.LogSettingsRequest.SettingValue(uint32_param=1)),
]


@pytest.mark.parametrize(("key", "value"), WRONG_KINDS)
def test_grpc_value_of_the_wrong_kind_names_the_setting(server, key, value):
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.LogSettings(pb.LogSettingsRequest(settings={key: value}))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and key in info.value.details()
        answer = stub.LogSettings(pb.LogSettingsRequest())
        assert answer.settings["log_verbose_level"].uint32_param == 0


def test_logging_is_a_restricted_api_group(repo, start_server, captured):
    repo.identity("identity")
    running = start_server(
        repo.root,
        http_restricted_api=["logging:admin-key=secret"],
        grpc_restricted_protocol=["logging:admin-key=secret"],
    )
    url = f"http://{running.http_url}/v2/logging"
    assert httpx.get(url).status_code == 403
    assert httpx.get(url, headers={"admin-key": "secret"}).json() == DEFAULTS
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_log_settings()
        headers = {"triton-grpc-protocol-admin-key": "secret"}
        assert client.get_log_settings(headers=headers, as_json=True)["settings"]
