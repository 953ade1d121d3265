"""server/auth.py: key store, scopes, restricted APIs and the authorize order."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from nereid.server import auth
from nereid.server.auth import ANONYMOUS, ApiGroup, Authorizer, KeyStore, RestrictedApis, bearer_token
from nereid.server.errors import ErrorCode, PermissionDenied, ServingError, Unauthenticated


def _write(path, keys):
    path.write_text(json.dumps({"keys": keys}))
    stamp = time.time() + len(keys) + 10
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def store(tmp_path):
    digest = hashlib.sha256(b"hashed-key").hexdigest()
    return KeyStore(
        _write(
            tmp_path / "keys.json",
            [
                {"name": "app", "key": "app-key", "models": ["resnet", "llm-*"]},
                {"name": "ops", "key_sha256": digest, "groups": ["statistics", "model-repository"]},
            ],
        )
    )


def test_bearer_token():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") == bearer_token("abc") == bearer_token("") == ""


def test_lookup_by_plain_or_hashed_key(store):
    assert store.lookup("app-key").name == "app"
    assert store.lookup("hashed-key").name == "ops"
    assert store.lookup("nope") is None and store.lookup("") is None


def test_scopes_default_to_inference_and_metadata_and_models_match_patterns(store):
    authorizer = Authorizer(store)
    headers = {"authorization": "Bearer app-key"}
    assert authorizer.authorize(headers, ApiGroup.INFERENCE, "resnet").name == "app"
    assert authorizer.authorize(headers, ApiGroup.METADATA, "llm-7b").name == "app"
    for group, model in ((ApiGroup.INFERENCE, "bert"), (ApiGroup.STATISTICS, "resnet")):
        with pytest.raises(PermissionDenied):
            authorizer.authorize(headers, group, model)


def test_unknown_and_missing_keys_get_the_same_answer(store):
    authorizer = Authorizer(store)
    messages = set()
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "app-key"}):
        with pytest.raises(Unauthenticated) as info:
            authorizer.authorize(headers, ApiGroup.INFERENCE, "resnet")
        messages.add(info.value.message)
    assert len(messages) == 1


def test_health_is_open_and_auth_off_is_anonymous(store):
    assert Authorizer(store).authorize({}, ApiGroup.HEALTH) is ANONYMOUS
    off = Authorizer()
    assert not off.enabled
    assert off.authorize({}, ApiGroup.MODEL_REPOSITORY, "x") is ANONYMOUS


def test_key_file_reloads_on_change_and_keeps_keys_on_a_bad_file(store, monkeypatch):
    monkeypatch.setattr(auth, "RELOAD_CHECK_S", 0.0)
    assert store.path is not None
    _write(store.path, [{"name": "new", "key": "new-key"}, {"name": "x", "key": "x"}, {"key": "y"}])
    assert store.lookup("app-key") is None
    assert store.lookup("new-key").name == "new"
    store.path.write_text("[1, 2")
    stamp = time.time() + 100
    os.utime(store.path, (stamp, stamp))
    assert store.lookup("new-key").name == "new"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a"}, "needs 'key' or 'key_sha256'"),
        ({"key": "k", "groups": ["inferenc"]}, "unknown API group 'inferenc'"),
        ({"key_sha256": "zz"}, "not hex"),
        ({"key_sha256": "ab"}, "64 hex digits"),
        ({"key": "k", "requests_per_second": -1}, "non-negative"),
        ({"key": "k", "models": "resnet"}, "list of names"),
    ],
)
def test_bad_key_files_are_refused_without_echoing_keys(tmp_path, entry, message):
    with pytest.raises(ValueError, match=message) as info:
        KeyStore(_write(tmp_path / "keys.json", [entry]))
    assert "'k'" not in str(info.value)


def test_environment_key_has_every_scope():
    authorizer = Authorizer(KeyStore(env_key="env"))
    principal = authorizer.authorize({"authorization": "Bearer env"}, ApiGroup.MODEL_REPOSITORY, "m")
    assert principal.authenticated and principal.groups == auth.ALL_GROUPS


def test_restricted_apis_follow_triton():
    http = RestrictedApis.parse(["inference,statistics:k=v"])
    authorizer = Authorizer(restricted=http)
    with pytest.raises(ServingError) as info:
        authorizer.authorize({"k": "w"}, ApiGroup.INFERENCE)
    assert info.value.code is ErrorCode.PERMISSION_DENIED
    assert info.value.message == "This API is restricted, expecting header 'k'"
    authorizer.authorize({"k": "v"}, ApiGroup.STATISTICS)
    authorizer.authorize({}, ApiGroup.METADATA)
    grpc = Authorizer(restricted=RestrictedApis.parse(["health:K=v"], grpc=True))
    with pytest.raises(ServingError) as info:
        grpc.authorize({}, ApiGroup.HEALTH)
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert "expecting header 'triton-grpc-protocol-k'" in info.value.message
    grpc.authorize({"triton-grpc-protocol-k": "v"}, ApiGroup.HEALTH)


def test_restrictions_come_before_keys(store):
    authorizer = Authorizer(store, RestrictedApis.parse(["inference:k=v"]))
    with pytest.raises(PermissionDenied, match="restricted"):
        authorizer.authorize({"authorization": "Bearer app-key"}, ApiGroup.INFERENCE, "resnet")
    headers = {"authorization": "Bearer app-key", "k": "v"}
    assert authorizer.authorize(headers, ApiGroup.INFERENCE, "resnet").name == "app"
