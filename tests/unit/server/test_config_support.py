"""Every ModelConfig field is classified, and refused / warned fields fail or warn at load."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from nereid.proto import model_config_pb2 as mc
from nereid.server.config_support import TABLE, Support, effective, markdown, set_field_paths
from nereid.server.model_config import ConfigError, validate


def _nested(field: FieldDescriptor) -> Descriptor | None:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        message = message.fields_by_name["value"].message_type
    return message


def proto_paths(descriptor: Descriptor, prefix: str = "") -> Iterator[str]:
    for field in descriptor.fields:
        yield prefix + field.name
        nested = _nested(field)
        if nested is not None:
            yield from proto_paths(nested, prefix + field.name + ".")


ALL_PATHS = list(proto_paths(mc.ModelConfig.DESCRIPTOR))


def test_every_proto_field_is_classified() -> None:
    missing = [path for path in ALL_PATHS if path not in TABLE]
    assert not missing, f"classify these ModelConfig fields in server/config_support.py: {missing}"
    assert set(TABLE) == set(ALL_PATHS), "the table names fields the proto does not have"


def _set(message: Message, names: list[str]) -> None:
    """Set the field path ``names`` under ``message`` to a non-default value."""
    field = message.DESCRIPTOR.fields_by_name[names[0]]
    container = getattr(message, names[0])
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field = field.message_type.fields_by_name["key"]
        key = "k" if key_field.type == FieldDescriptor.TYPE_STRING else 1
        if _nested(field) is None:
            container[key] = "v"
            return
        child = container[key]
    elif field.message_type is not None:
        child = container.add() if field.is_repeated else container
        child.SetInParent()
    else:
        value = {
            FieldDescriptor.TYPE_STRING: "x",
            FieldDescriptor.TYPE_BOOL: True,
            FieldDescriptor.TYPE_FLOAT: 0.5,
            FieldDescriptor.TYPE_DOUBLE: 0.5,
        }.get(field.type, 1)
        if field.is_repeated:
            container.append(value)
        else:
            setattr(message, names[0], value)
        return
    if len(names) > 1:
        _set(child, names[1:])


def _config(path: str, backend: str = "python") -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", backend=backend, max_batch_size=4)
    config.input.add(name="INPUT", data_type=mc.TYPE_FP32, dims=[1])
    config.output.add(name="OUTPUT", data_type=mc.TYPE_FP32, dims=[1])
    if path.startswith("dynamic_batching.priority_queue_policy"):
        config.dynamic_batching.priority_levels = 1
    _set(config, path.split("."))
    return config


@pytest.mark.parametrize("path", [p for p in ALL_PATHS if TABLE[p].support is Support.REFUSED])
def test_a_refused_field_fails_the_load_naming_it(path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(_config(path), "models/m")
    assert f"models/m: field '{path}' is not supported by Nereid" in caught.value.message


@pytest.mark.parametrize("path", [p for p in ALL_PATHS if effective(TABLE[p], "python") is Support.WARNED])
def test_a_warned_field_logs_one_warning_naming_it(path: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nereid.server.model_config"):
        validate(_config(path), "models/m")
    named = [r for r in caplog.records if f"field '{path}' is not acted on" in r.getMessage()]
    assert len(named) == 1, caplog.text


def test_backend_specific_fields_warn_only_where_no_backend_acts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nereid.server.model_config"):
        validate(_config("optimization.graph.level", backend="onnxruntime"), "models/m")
    assert "optimization.graph" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="nereid.server.model_config"):
        validate(_config("optimization.graph.level", backend="python"), "models/m")
    assert "field 'optimization.graph.level' is not acted on by backend 'python'" in caplog.text


def test_implemented_fields_load_quietly(caplog: pytest.LogCaptureFixture) -> None:
    config = _config("dynamic_batching.max_queue_delay_microseconds")
    config.parameters["EXECUTION_ENV_PATH"].string_value = "x"
    with caplog.at_level(logging.WARNING):
        validate(config, "models/m")
    assert not caplog.records
    assert "parameters.string_value" in set_field_paths(config)


def test_the_readme_lists_every_refused_and_warned_field() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    assert markdown() in readme, "regenerate with: python -m nereid.server.config_support"
