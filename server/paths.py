"""Paths a config or a load request names: kept inside the model's folder, and kept out of errors.

A config override in a load request is client input. Every file name it (or a config file)
can carry is checked with :func:`confine` before any backend opens it, so a load can never
import or read a file outside the model's own folder. Error messages that travel back to
clients pass through :func:`scrub_paths`, which writes repository paths relative to the
repository root and hides any other absolute path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InvalidArgument

#: A path parameter with this prefix names an installed package, not a file.
PACKAGE_PREFIX = "package:"


def confine(model_dir: Path, relative: str, field: str, base: str = "") -> Path:
    """``model_dir / base / relative``, refused unless it stays inside ``model_dir`` (symlinks resolved).

    Raises InvalidArgument naming ``field`` for absolute paths, drive letters, NUL bytes and
    any path whose resolved form leaves the model's folder (``..``, or a symlink pointing out).
    ``base`` is the folder inside the model's that ``relative`` is relative to (a version
    folder, ``warmup``). The file need not exist; what exists of the path is resolved.
    """
    if not relative or "\x00" in relative:
        raise InvalidArgument(f"'{field}' must be a non-empty relative path inside the model folder")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or ":" in relative:
        raise InvalidArgument(f"'{field}' must be a path relative to the model folder, got an absolute path")
    root = model_dir.resolve()
    target = (root / base / relative).resolve()
    if target != root and root not in target.parents:
        raise InvalidArgument(f"'{field}' names a path outside the model folder: '{relative}'")
    return target


# An absolute POSIX path: a slash at a word start, then path components.
# Two segments at least: "/etc" alone is too likely to be text (a closing "</tag>", a ratio).
_ABSOLUTE = re.compile(r"(?<![\w.~/-])/(?:[\w.~+@-]+/)+[\w.~+@-]+")


def scrub_paths(message: str, roots: Iterable[Path]) -> str:
    """``message`` with repository paths relative to their root and other absolute paths reduced to their name."""
    prefixes: set[str] = set()
    for root in roots:
        for form in (root, root.absolute(), root.resolve()):
            prefixes.add(str(form).rstrip("/") + "/")
    for prefix in sorted(prefixes, key=len, reverse=True):
        message = message.replace(prefix, "")
    return _ABSOLUTE.sub(lambda m: m.group(0).rsplit("/", 1)[-1], message)


def confine_config_paths(
    config: mc.ModelConfig,
    model_dir: Path,
    versions: Iterable[int],
    path_parameters: Iterable[str] = (),
) -> None:
    """Refuse a config naming any file outside ``model_dir``: model files (per version), label
    files, warmup data, and the ``path_parameters`` a backend reads as paths (``package:`` specs
    name installed packages, not paths, and pass)."""
    versions = list(versions)
    model_files = {"default_model_filename": config.default_model_filename}
    model_files.update({f"cc_model_filenames[{k}]": v for k, v in config.cc_model_filenames.items()})
    for key in path_parameters:
        if key in config.parameters:
            value = config.parameters[key].string_value.strip()
            if not value.startswith(PACKAGE_PREFIX):
                model_files[f"parameters[{key}]"] = value
    for field, name in model_files.items():
        if name:
            # Names are relative to a version folder; without one, "0" still refuses absolute names.
            for version in versions or [0]:
                confine(model_dir, name, field, base=str(version))
    for index, output in enumerate(config.output):
        if output.label_filename:
            confine(model_dir, output.label_filename, f"output[{index}].label_filename")
    for index, warmup in enumerate(config.model_warmup):
        for name, data in warmup.inputs.items():
            if data.input_data_file:
                field = f"model_warmup[{index}].inputs[{name}].input_data_file"
                confine(model_dir, data.input_data_file, field, base="warmup")
