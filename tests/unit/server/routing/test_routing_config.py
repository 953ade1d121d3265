"""The routing section: parsing, validation messages that name the field, Triton configs untouched."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from nereid.proto import model_config_pb2 as mc
from nereid.server.model_config import ConfigError
from nereid.server.routing.config import check_versions, routing_config


def _config(text: str | None) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse('name: "m" backend: "python"', config)
    if text is not None:
        config.parameters["nereid.routing"].string_value = text
    return config


def test_a_triton_config_has_no_routing():
    assert routing_config(_config(None), "m") is None


def test_yaml_and_json_give_the_same_section():
    yaml_text = "weights: {1: 95, 2: 5}\nsticky: {header: X-User}\nshadow: {version: 2, fraction: 0.1}"
    json_text = '{"weights": {"1": 95, "2": 5}, "sticky": {"header": "X-User"}, "shadow": {"version": 2, "fraction": 0.1}}'
    a, b = routing_config(_config(yaml_text), "m"), routing_config(_config(json_text), "m")
    assert a == b and a is not None
    assert a.weights == ((1, 95.0), (2, 5.0)) and a.sticky is not None and a.sticky.header == "x-user"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("weights: {1: 90, 2: 5}", "weights: the weights must sum to 100, got 95"),
        ("weights: {one: 100}", "weights key: a version must be"),
        ("weights: [1, 2]", "weights: must map versions"),
        ("colour: red", "unknown field(s) ['colour']"),
        ("sticky: {}", "sticky: set 'parameter' or 'header'"),
        ("shadow: {fraction: 0.5}", "shadow: must be a mapping with at least 'version'"),
        ("shadow: {version: 2, fraction: 2}", "shadow.fraction: must be a number in [0, 1]"),
        ("canary: {stable: 1}", "canary: must be a mapping with at least 'stable' and 'candidate'"),
        ("canary: {stable: 1, candidate: 2, steps: [50, 25]}", "canary.steps: must increase"),
        ("canary: {stable: 1, candidate: 1}", "'stable' and 'candidate' must differ"),
        (
            "canary: {stable: 1, candidate: 2, min_agreement: 0.9}",
            "canary.min_agreement needs 'shadow.version'",
        ),
        ("canary: {stable: 1, candidate: 2}\nweights: {1: 100}", "'weights' and 'canary' are exclusive"),
        ("[1, 2", "is not valid YAML or JSON"),
    ],
)
def test_errors_name_the_field(text, field):
    with pytest.raises(ConfigError) as info:
        routing_config(_config(text), "models/m/config.pbtxt")
    message = info.value.message
    assert message.startswith("models/m/config.pbtxt: parameters['nereid.routing']") and field in message


def test_versions_must_be_served_by_the_version_policy():
    routing = routing_config(_config("canary: {stable: 1, candidate: 3}"), "m")
    assert routing is not None
    check_versions(routing, [1, 3], "m")
    with pytest.raises(ConfigError, match=r"canary.candidate names unknown version 3"):
        check_versions(routing, [1, 2], "m")


def test_the_readme_examples_load(tmp_path):
    import re
    from pathlib import Path

    from nereid.server.model_config import parse_config_file

    readme = (Path(__file__).parents[4] / "README.md").read_text()
    blocks = re.findall(r"```(?:yaml)?\n(# config\.(pbtxt|yaml)\n.*?)```", readme, re.S)
    assert {kind for _, kind in blocks} == {"pbtxt", "yaml"}
    for text, kind in blocks:
        path = tmp_path / f"config.{kind}"
        path.write_text(text)
        routing = routing_config(parse_config_file(path), str(path))
        assert routing is not None and (routing.weights or routing.canary)
