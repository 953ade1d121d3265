"""Instance-group fields checked at load, before any backend is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from nereid.proto import model_config_pb2 as mc
from nereid.server.model_config import ConfigError
from nereid.server.model_version import load_version


def _config(text: str) -> mc.ModelConfig:
    config = text_format.Parse(text, mc.ModelConfig())
    for index, group in enumerate(config.instance_group):
        group.name = group.name or f"m_{index}"
        group.count = group.count or 1
    return config


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            'platform: "tensorrt_plan" instance_group [ { kind: KIND_CPU profile: [ "1" ] } ]',
            "instance_group[0].profile ['1']: Nereid runs engines with optimization profile '0' only",
        ),
        (
            'platform: "tensorrt_plan" instance_group [ { kind: KIND_CPU profile: [ "0", "1" ] } ]',
            "optimization profile '0' only",
        ),
        (
            'backend: "python" instance_group [ { kind: KIND_CPU passive: true } ]',
            "every instance_group is 'passive'",
        ),
    ],
)
def test_bad_instance_groups_fail_before_loading(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_version("m", 1, _config(text), tmp_path, None)
