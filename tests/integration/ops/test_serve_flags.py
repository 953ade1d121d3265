"""`nereid serve --help` documents every flag, and the spellings KServe runtimes pass are accepted."""

from __future__ import annotations

import dataclasses
import subprocess
import urllib.request

from nereid.server.settings import Settings, parse_settings


def test_help_names_every_flag_with_its_default_and_variable(failover):
    result = subprocess.run([failover.NEREID, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        assert f"env NEREID_{field.name.upper()})" in text, field.name
    assert "(default: 8000; env NEREID_HTTP_PORT)" in text
    assert "(default: 2.0; env NEREID_DRAIN_DELAY_SECS)" in text


def test_kserve_and_triton_spellings(tmp_path, monkeypatch):
    monkeypatch.setenv("NEREID_EXIT_TIMEOUT_SECS", "7")
    settings = parse_settings(
        ["--model_dir=/mnt/models", "--http_port", "8080", "--grpc_port=9000", "--model_name=m"]
    )
    assert settings.model_repository[0].as_posix() == "/mnt/models"
    assert (settings.http_port, settings.grpc_port, settings.model_name) == (8080, 9000, "m")
    assert settings.exit_timeout_secs == 7  # from the variable
    assert parse_settings(["--model-store", "/x", "--exit-timeout-secs=3"]).exit_timeout_secs == 3


def test_a_single_model_folder_is_served_under_model_name(failover, replicas, repo, tmp_path):
    """KServe's storageUri pointing at one model: /mnt/models holds config.pbtxt and 1/ itself."""
    folder = repo.add_sub(name="my-isvc")  # config.pbtxt names it, as Triton requires
    replica = failover.Replica("kserve", folder, tmp_path, ["--model_name=my-isvc"])
    replicas.append(replica)
    replica.start()
    replica.wait_ready()
    url = f"http://127.0.0.1:{replica.http_port}/v2/models/my-isvc/ready"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
