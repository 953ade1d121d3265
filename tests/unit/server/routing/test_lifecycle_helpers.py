"""Upload confinement, load parameters and poll-mode fingerprints."""

from __future__ import annotations

import base64

import pytest

from nereid.server.errors import InvalidArgument
from nereid.server.lifecycle import confined, fingerprint, load_parameters, remove_upload, write_uploads


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "1/../../x", "1//x", "./x", "a\\b", ""])
def test_paths_escaping_the_model_folder_are_refused(tmp_path, bad):
    with pytest.raises(InvalidArgument):
        confined(tmp_path, bad)


def test_symlinks_out_of_the_folder_are_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidArgument):
        confined(tmp_path / "model", "link/x")


def test_uploads_write_a_model_folder_and_remove_it():
    folder = write_uploads("m", {"1/model.onnx": b"abc", "labels.txt": b"x"})
    assert (folder / "1" / "model.onnx").read_bytes() == b"abc" and folder.name == "m"
    remove_upload(folder)
    assert not folder.parent.exists()


def test_load_parameters_decode_both_transports():
    http = load_parameters({"config": '{"backend": "python"}', "file:1/a": base64.b64encode(b"hi").decode()})
    grpc = load_parameters({"config": '{"backend": "python"}', "file:1/a": b"hi"})
    assert http.files == grpc.files == {"1/a": b"hi"} and http.config == grpc.config
    assert load_parameters({"routing_action": "promote"}).routing_action == "promote"
    for bad in ({"config": 3}, {"config": "[1]"}, {"file:a": "not base64!"}, {"routing_action": "halt"}):
        with pytest.raises(InvalidArgument):
            load_parameters(bad)


def test_fingerprints_change_with_versions_and_config(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "config.pbtxt").write_text("a")
    before = fingerprint(tmp_path)
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "w").write_bytes(b"1")
    after = fingerprint(tmp_path)
    assert before != after
    (tmp_path / "config.pbtxt").write_text("ab")
    assert fingerprint(tmp_path) != after
    assert fingerprint(tmp_path / "missing") == ()
