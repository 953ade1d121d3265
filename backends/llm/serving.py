"""From a model's ``config.pbtxt`` to an :class:`EngineConfig`: parameters, the model path, the I/O signature.

Parameters are strings (Triton's ``parameters { key: "..." value: { string_value: "..." } }``); each known key
maps onto the EngineConfig field of the same name. A bad value fails the load with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nereid.backends.base import InstanceContext, ModelContext
from nereid.backends.llm.config import EngineConfig, SpeculativeConfig
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InvalidArgument

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
_SIZE_SUFFIXES = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def _int(text: str) -> int:
    return int(text.strip())


def _size(text: str) -> int:
    """Bytes, optionally with a unit: ``134217728``, ``128MiB``, ``1GiB``."""
    lowered = text.strip().lower()
    for suffix, scale in _SIZE_SUFFIXES.items():
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * scale)
    return int(lowered)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "dtype": str.strip,
    "kv_cache_bytes": _size,
    "kv_cache_memory_fraction": float,
    "num_kv_blocks": _int,
    "block_size": _int,
    "max_num_seqs": _int,
    "max_num_batched_tokens": _int,
    "max_model_len": _int,
    "enable_prefix_caching": _bool,
    "enable_chunked_prefill": _bool,
    "max_n": _int,
    "max_logprobs": _int,
    "seed": _int,
    "weights": str.strip,
    "compile": _bool,
    "max_grammar_bytes": _size,
    "max_schema_depth": _int,
    "num_threads": _int,
    "kernels": str.strip,
}
PATH_PARAMETERS = ("model", "tokenizer")
SPECULATIVE = "speculative_config"
"""vLLM's ``--speculative-config`` JSON, e.g. ``{"method": "ngram", "num_speculative_tokens": 4}``."""

# The Triton vLLM-backend signature; auto-complete fills it in when a config declares no inputs.
INPUTS = (
    ("text_input", mc.TYPE_STRING, [1]),
    ("messages", mc.TYPE_STRING, [1]),
    ("input_ids", mc.TYPE_INT64, [-1]),
    ("stream", mc.TYPE_BOOL, [1]),
    ("sampling_parameters", mc.TYPE_STRING, [1]),
    ("exclude_input_in_output", mc.TYPE_BOOL, [1]),
)
OUTPUTS = (("text_output", mc.TYPE_STRING, [-1]),)


def auto_complete(config: mc.ModelConfig) -> None:
    """Fill the standard inputs/outputs (all inputs optional) and mark the model decoupled."""
    if not config.input:
        for name, dtype, dims in INPUTS:
            config.input.add(name=name, data_type=dtype, dims=dims, optional=True)
    if not config.output:
        for name, dtype, dims in OUTPUTS:
            config.output.add(name=name, data_type=dtype, dims=dims)
    if not config.HasField("model_transaction_policy"):
        config.model_transaction_policy.decoupled = True


def engine_config(context: ModelContext, instance: InstanceContext) -> EngineConfig:
    """The engine configuration of one instance; raises InvalidArgument naming the bad parameter."""
    values: dict[str, Any] = {"device": instance.device}
    for key in context.config.parameters:
        text = context.config.parameters[key].string_value
        if key in PATH_PARAMETERS:
            values[key] = str(resolve_path(text, context.version_dir, key))
        elif key == SPECULATIVE:
            values[key] = speculative_config(text, context.version_dir)
        elif key in _PARSERS:
            try:
                values[key] = _PARSERS[key](text)
            except ValueError as exc:
                raise InvalidArgument(f"parameter '{key}': invalid value {text!r} ({exc})") from None
        elif not key.startswith("nereid."):  # server-wide keys (nereid.task, ...) are read elsewhere
            log.warning("model '%s': ignoring unknown parameter '%s'", context.name, key)
    if "model" not in values:
        values["model"] = str(default_model_path(context.version_dir))
    try:
        return EngineConfig(**values)
    except ValueError as exc:
        raise InvalidArgument(f"model '{context.name}': invalid engine parameters: {exc}") from None


def speculative_config(text: str, version_dir: Path) -> SpeculativeConfig:
    """Parse the ``speculative_config`` parameter; a draft ``model`` path resolves like ``model``."""
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError("expected a JSON object")
        known = {f.name for f in dataclasses.fields(SpeculativeConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        spec = SpeculativeConfig(**fields)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"parameter '{SPECULATIVE}': invalid value {text!r} ({exc})") from None
    if spec.model:
        spec.model = str(resolve_path(spec.model, version_dir, f"{SPECULATIVE}.model"))
    return spec


def resolve_path(text: str, version_dir: Path, key: str = "model") -> Path:
    """``package:NAME[/FILE]`` (a .gguf inside an installed package, found without importing it), an
    absolute path, or a path relative to the version folder."""
    text = text.strip()
    if text.startswith(PACKAGE_PREFIX):
        return _package_file(text[len(PACKAGE_PREFIX) :], key)
    path = Path(text).expanduser()
    path = path if path.is_absolute() else version_dir / path
    if not path.exists():
        raise InvalidArgument(f"parameter '{key}': {path} does not exist")
    return path


def _package_file(spec: str, key: str) -> Path:
    package, _, filename = spec.partition("/")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise InvalidArgument(f"parameter '{key}': package '{package}' is not installed (pip install it)")
    folder = Path(locations[0])
    if filename:
        candidates = [folder / filename] if (folder / filename).exists() else []
    else:
        candidates = sorted(folder.glob("*.gguf"))
    if len(candidates) != 1:
        what = f"'{filename}'" if filename else f"exactly one .gguf file (found {len(candidates)})"
        raise InvalidArgument(f"parameter '{key}': package '{package}' at {folder} has no {what}")
    return candidates[0]


def default_model_path(version_dir: Path) -> Path:
    """Without a ``model`` parameter: the version folder in Hugging Face layout, or its only .gguf file."""
    if (version_dir / "config.json").is_file():
        return version_dir
    ggufs = sorted(version_dir.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise InvalidArgument(
        f"parameter 'model' is not set and {version_dir} holds neither config.json nor exactly one .gguf file"
    )
