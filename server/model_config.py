"""The one model-config loader: ``config.pbtxt`` or ``config.yaml`` -> validated ModelConfig.

Both files hold Triton's ModelConfig schema (``proto/model_config.proto``); YAML uses the
protobuf field names. Nothing else in Nereid parses config files. Errors name the file and
the field, and fail only the model they belong to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from nereid.proto import model_config_pb2 as mc
from nereid.server import config_support
from nereid.server.datatypes import config_to_api
from nereid.server.errors import InvalidArgument

log = logging.getLogger(__name__)

CONFIG_FILES = ("config.pbtxt", "config.yaml", "config.yml")


class ConfigError(InvalidArgument):
    """A config that cannot be loaded; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output as the config declares it (``dims`` exclude the batch dimension)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False

    def full_shape(self, max_batch_size: int) -> list[int]:
        return [-1, *self.dims] if max_batch_size > 0 else list(self.dims)


def find_config_file(model_dir: Path) -> Path | None:
    present = [model_dir / name for name in CONFIG_FILES if (model_dir / name).is_file()]
    if len(present) > 1:
        raise ConfigError(f"{model_dir}: found {', '.join(p.name for p in present)}; keep only one")
    return present[0] if present else None


def parse_config_file(path: Path) -> mc.ModelConfig:
    """Parse one config file without filling defaults."""
    config = mc.ModelConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if path.suffix == ".pbtxt":
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return config
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return config
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of ModelConfig fields")
    try:
        json_format.ParseDict(data, config)
    except json_format.ParseError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config


def config_from_dict(data: dict, origin: str = "config") -> mc.ModelConfig:
    """A ModelConfig from JSON-like data (load API overrides); same errors as files."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: must be a JSON object of ModelConfig fields")
    config = mc.ModelConfig()
    try:
        json_format.ParseDict(data, config)
    except json_format.ParseError as exc:
        raise ConfigError(f"{origin}: {exc}") from exc
    return config


def config_to_dict(config: mc.ModelConfig, every_field: bool = False) -> dict:
    """The JSON rendering Triton serves on ``/v2/models/{m}/config``.

    Protobuf field names, enum names; 64-bit integers as JSON numbers (protobuf's printer
    makes them strings, Triton's does not). ``every_field`` also prints the fields left at
    their defaults (empty lists and maps, zeros), as a Python model's ``args['model_config']``
    and ``auto_complete_config`` expect; ``config_from_dict`` reads either form back.
    """
    data = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=every_field
    )
    _int64_to_numbers(config.DESCRIPTOR, data)
    return data


_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _int64_to_numbers(descriptor: Descriptor, data: dict) -> None:
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for item in value.values():
                        _int64_to_numbers(value_field.message_type, item)
            elif isinstance(value, list):
                for item in value:
                    _int64_to_numbers(field.message_type, item)
            else:
                _int64_to_numbers(field.message_type, value)
        elif field.type in _INT64_TYPES:
            data[key] = [int(v) for v in value] if isinstance(value, list) else int(value)


def _tensor_specs(kind: str, tensors: list, origin: str) -> tuple[TensorSpec, ...]:
    specs: list[TensorSpec] = []
    seen: set[str] = set()
    for index, tensor in enumerate(tensors):
        where = f"{origin}: {kind}[{index}]"
        if not tensor.name:
            raise ConfigError(f"{where}: 'name' is required")
        if tensor.name in seen:
            raise ConfigError(f"{where}: duplicate {kind} name '{tensor.name}'")
        seen.add(tensor.name)
        type_name = mc.DataType.Name(tensor.data_type)
        try:
            datatype = config_to_api(type_name)
        except KeyError:
            raise ConfigError(f"{where} '{tensor.name}': 'data_type' must be set (got {type_name})") from None
        for dim in tensor.dims:
            if dim < -1 or dim == 0:
                raise ConfigError(
                    f"{where} '{tensor.name}': 'dims' entries must be -1 or positive, got {dim}"
                )
        optional = bool(getattr(tensor, "optional", False))
        specs.append(TensorSpec(tensor.name, datatype, tuple(tensor.dims), optional))
    return tuple(specs)


def input_specs(config: mc.ModelConfig, origin: str = "config") -> tuple[TensorSpec, ...]:
    return _tensor_specs("input", list(config.input), origin)


def output_specs(config: mc.ModelConfig, origin: str = "config") -> tuple[TensorSpec, ...]:
    return _tensor_specs("output", list(config.output), origin)


def validate(config: mc.ModelConfig, origin: str) -> None:
    """Cross-field rules; raises ConfigError naming ``origin`` and the field.

    Fields Nereid does not support fail the load; optimisation hints it does not act on are
    logged once each (see :mod:`nereid.server.config_support`).
    """
    refused, warned = config_support.check(config)
    if refused:
        # Name the most precise field: the deepest refused one under the first.
        path = max((p for p in refused if p == refused[0] or p.startswith(refused[0] + ".")), key=len)
        raise ConfigError(f"{origin}: {config_support.refusal(path)}")
    for path in warned:
        log.warning("%s: %s", origin, config_support.warning(path, config_support.backend_of(config)))
    if config.max_batch_size < 0:
        raise ConfigError(f"{origin}: 'max_batch_size' must be >= 0, got {config.max_batch_size}")
    input_specs(config, origin)
    output_specs(config, origin)
    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling == "dynamic_batching":
        _validate_dynamic_batching(config, origin)
    if config.response_cache.enable and config.model_transaction_policy.decoupled:
        raise ConfigError(
            f"{origin}: response cache does not currently support model '{config.name}' with a "
            "decoupled transaction policy; remove response_cache { enable: true }"
        )
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "latest" and config.version_policy.latest.num_versions < 1:
        raise ConfigError(f"{origin}: 'version_policy.latest.num_versions' must be >= 1")
    if policy == "specific" and not config.version_policy.specific.versions:
        raise ConfigError(f"{origin}: 'version_policy.specific.versions' must list at least one version")
    for index, group in enumerate(config.instance_group):
        if group.count < 0:
            raise ConfigError(f"{origin}: instance_group[{index}].count must be >= 0, got {group.count}")
        if group.gpus and group.kind not in (mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_AUTO):
            raise ConfigError(
                f"{origin}: instance_group[{index}].gpus may only be set for KIND_GPU or KIND_AUTO"
            )


def _validate_dynamic_batching(config: mc.ModelConfig, origin: str) -> None:
    batching = config.dynamic_batching
    if config.max_batch_size == 0:
        raise ConfigError(f"{origin}: 'dynamic_batching' needs 'max_batch_size' > 0")
    for size in batching.preferred_batch_size:
        if size < 1 or size > config.max_batch_size:
            raise ConfigError(
                f"{origin}: dynamic_batching.preferred_batch_size {size} must be in [1, max_batch_size "
                f"{config.max_batch_size}]"
            )
    levels = batching.priority_levels
    if levels and not 1 <= batching.default_priority_level <= levels:
        raise ConfigError(
            f"{origin}: dynamic_batching.default_priority_level must be in [1, priority_levels {levels}], "
            f"got {batching.default_priority_level}"
        )
    for level in batching.priority_queue_policy:
        if not 1 <= level <= levels:
            raise ConfigError(
                f"{origin}: dynamic_batching.priority_queue_policy key {level} is outside [1, {levels}]"
            )


def fill_defaults(config: mc.ModelConfig, default_filename: str, default_count: int, has_gpu: bool) -> None:
    """Defaults Triton applies after auto-complete: file name, version policy, instance groups."""
    if not config.default_model_filename and default_filename:
        config.default_model_filename = default_filename
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if config.platform == "ensemble":
        return
    if not config.instance_group:
        group = config.instance_group.add()
        group.kind = mc.ModelInstanceGroup.KIND_GPU if has_gpu else mc.ModelInstanceGroup.KIND_CPU
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_GPU if has_gpu else mc.ModelInstanceGroup.KIND_CPU
        if group.count == 0:
            group.count = default_count if group.kind == mc.ModelInstanceGroup.KIND_CPU else 1
