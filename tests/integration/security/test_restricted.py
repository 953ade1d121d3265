"""Triton's restricted APIs, with Triton's flags, group names, headers and refusals."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from nereid.server.settings import parse_settings

PREFIX = "triton-grpc-protocol-"


@pytest.fixture(scope="module")
def server(security_repo, start_module_server):
    return start_module_server(
        security_repo.root,
        http_restricted_api=[
            "model-repository,statistics:admin-key=admin-value",
            "inference:infer-key=infer-value",
        ],
        grpc_restricted_protocol=[
            "model-repository,statistics:admin-key=admin-value",
            "health:infer-key=infer-value",
        ],
    )


def test_http_restricted_groups_need_their_header(server, kit):
    c = kit.client("http", server.http_url)
    with pytest.raises(InferenceServerException) as info:
        kit.infer("http", c, headers={"infer-key": "wrong"})
    assert kit.status(info.value) == "403"
    assert info.value.message() == "This API is restricted, expecting header 'infer-key'"
    kit.infer("http", c, headers={"infer-key": "infer-value"})
    with pytest.raises(InferenceServerException, match="expecting header 'admin-key'"):
        c.get_inference_statistics("identity", headers={"infer-key": "infer-value"})
    assert c.get_inference_statistics("identity", headers={"admin-key": "admin-value"})
    # Groups without a restriction stay open; health is open unless restricted.
    assert c.get_model_metadata("identity") and c.is_server_live()


def test_grpc_restricted_protocols_answer_unavailable_like_triton(server, kit):
    c = kit.client("grpc", server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        c.is_server_live()
    assert kit.status(info.value) == "StatusCode.UNAVAILABLE"
    assert "This protocol is restricted, expecting header 'triton-grpc-protocol-infer-key'" in str(info.value)
    assert c.is_server_live(headers={PREFIX + "infer-key": "infer-value"})
    with pytest.raises(InferenceServerException, match="This protocol is restricted"):
        c.unload_model("identity", headers={PREFIX + "infer-key": "infer-value"})
    # Past the restriction the real answer comes back (model control is off).
    with pytest.raises(InferenceServerException, match="not allowed"):
        c.unload_model("identity", headers={PREFIX + "admin-key": "admin-value"})
    kit.infer("grpc", c)  # inference is restricted over HTTP only


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("model-reposit:k=v", "unknown restricted api 'model-reposit'"),
        ("inference", "must look like"),
        ("inference:k", "must look like"),
    ],
)
def test_bad_restrictions_refuse_to_start(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        parse_settings(["--model-repository", str(tmp_path), "--http-restricted-api", spec])


def test_a_group_belongs_to_one_restriction(tmp_path):
    argv = ["--model-repository", str(tmp_path), "--grpc-restricted-protocol"]
    with pytest.raises(ValueError, match="multiple"):
        parse_settings([*argv, "inference:a=b", "--grpc-restricted-protocol", "inference,health:c=d"])
