from __future__ import annotations

from pathlib import Path

import pytest

from nereid.proto import model_config_pb2 as mc
from nereid.server.model_config import (
    ConfigError,
    config_to_dict,
    find_config_file,
    input_specs,
    parse_config_file,
    validate,
)
from nereid.server.repository import available_versions, select_versions

PBTXT = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 3, -1 ] } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
version_policy: { latest: { num_versions: 2 } }
"""

YAML = """
name: m
platform: onnxruntime_onnx
max_batch_size: 8
input: [{name: IN, data_type: TYPE_FP32, dims: [3, -1]}]
output: [{name: OUT, data_type: TYPE_STRING, dims: [1]}]
dynamic_batching: {preferred_batch_size: [4], max_queue_delay_microseconds: 100}
instance_group: [{count: 2, kind: KIND_CPU}]
parameters: {intra_op_thread_count: {string_value: "1"}}
version_policy: {latest: {num_versions: 2}}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_pbtxt_and_yaml_give_the_same_config(tmp_path):
    a = parse_config_file(write(tmp_path, "config.pbtxt", PBTXT))
    b = parse_config_file(write(tmp_path, "config.yaml", YAML))
    assert a == b
    assert input_specs(a)[0].full_shape(a.max_batch_size) == [-1, 3, -1]
    assert config_to_dict(a)["dynamic_batching"]["max_queue_delay_microseconds"] == 100


def test_both_files_present_is_an_error(tmp_path):
    write(tmp_path, "config.pbtxt", PBTXT)
    write(tmp_path, "config.yaml", YAML)
    with pytest.raises(ConfigError, match="keep only one"):
        find_config_file(tmp_path)


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("config.pbtxt", "max_batch_size: 'x'", "max_batch_size"),
        ("config.pbtxt", "input [ { name: 'a' data_type: TYPE_WHAT } ]", "TYPE_WHAT"),
        ("config.yaml", "max_batch_size: [1]", "max_batch_size"),
        ("config.yaml", "nope: 1", "nope"),
        ("config.yaml", "- a list", "top level must be a mapping"),
        ("config.yaml", "a: [unclosed", "invalid YAML"),
    ],
)
def test_parse_errors_name_the_file_and_the_field(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        parse_config_file(path)
    assert str(path) in info.value.message and message in info.value.message


@pytest.mark.parametrize(
    "text,message",
    [
        ("max_batch_size: -1", "'max_batch_size' must be >= 0"),
        ("input [ { data_type: TYPE_FP32 dims: [1] } ]", "'name' is required"),
        ("input [ { name: 'a' dims: [1] } ]", "'data_type' must be set"),
        ("input [ { name: 'a' data_type: TYPE_FP32 dims: [0] } ]", "'dims' entries must be -1 or positive"),
        (
            "input [ { name: 'a' data_type: TYPE_FP32 dims: [1] }, { name: 'a' data_type: TYPE_FP32 dims: [1] } ]",
            "duplicate input name",
        ),
        ("dynamic_batching { }", "needs 'max_batch_size' > 0"),
        ("max_batch_size: 4 dynamic_batching { preferred_batch_size: [8] }", "preferred_batch_size 8"),
        (
            "max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
            "default_priority_level",
        ),
        ("version_policy { specific { } }", "at least one version"),
        ("instance_group [ { kind: KIND_CPU gpus: [0] } ]", "gpus may only be set"),
    ],
)
def test_cross_field_rules(text, message):
    config = mc.ModelConfig()
    from google.protobuf import text_format

    text_format.Parse(text, config)
    with pytest.raises(ConfigError, match=message):
        validate(config, "m/config.pbtxt")


def test_version_folders_and_policies(tmp_path):
    for name in ("1", "2", "10", "03", "x", "0"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a folder")
    assert available_versions(tmp_path) == [0, 1, 2, 10]
    policy = mc.ModelVersionPolicy()
    assert select_versions(policy, [1, 2, 10]) == [10]
    policy.latest.num_versions = 2
    assert select_versions(policy, [1, 2, 10]) == [2, 10]
    policy.all.SetInParent()
    assert select_versions(policy, [1, 2, 10]) == [1, 2, 10]
    policy.specific.versions.extend([1, 3])
    assert select_versions(policy, [1, 2, 10]) == [1]
