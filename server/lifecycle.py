"""Model lifecycle helpers: poll-mode change detection, footprints for the memory budget, uploads.

The repository (:mod:`nereid.server.repository`) decides what to load and unload; this module
answers the questions it asks of the file system.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InvalidArgument, ServingError
from nereid.server.model_config import CONFIG_FILES, config_from_dict

if TYPE_CHECKING:
    from nereid.server.repository import ModelRepository

log = logging.getLogger(__name__)

#: A config parameter overriding a model's estimated footprint (bytes) for the memory budget.
MEMORY_KEY = "nereid.memory_bytes"

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(model_dir: Path) -> Fingerprint:
    """(path, size, mtime) of the config files and of every file under the numeric version folders.

    Poll mode compares these: a new, changed or removed version or config file changes it.
    A folder that vanished has the empty fingerprint.
    """
    rows: list[tuple[str, int, int]] = []
    try:
        children = list(model_dir.iterdir())
    except OSError:
        return ()
    for child in children:
        try:
            if child.is_file() and child.name in CONFIG_FILES:
                st = child.stat()
                rows.append((child.name, st.st_size, st.st_mtime_ns))
            elif child.is_dir() and child.name.isdigit():
                st = child.stat()
                rows.append((child.name + "/", 0, st.st_mtime_ns))
                for root, _, files in os.walk(child):
                    for name in files:
                        path = Path(root, name)
                        st = path.stat()
                        rows.append((str(path.relative_to(model_dir)), st.st_size, st.st_mtime_ns))
        except OSError:
            continue  # a file removed while we look: the next poll sees the settled state
    return tuple(sorted(rows))


def footprint(model_dir: Path, versions: list[int]) -> int:
    """Estimated resident bytes of ``versions``: the size of their files (weights dominate)."""
    total = 0
    for version in versions:
        for root, _, files in os.walk(model_dir / str(version)):
            for name in files:
                with contextlib.suppress(OSError):
                    total += Path(root, name).stat().st_size
    return total


def confined(base: Path, relative: str) -> Path:
    """``base / relative``, refusing anything that would land outside ``base``.

    Written here for ``file:`` uploads; the shared ``confine()`` helper can replace it.
    """
    if not relative or relative.startswith(("/", "\\")) or "\\" in relative or "\x00" in relative:
        raise InvalidArgument(f"'file:{relative}' must be a relative path inside the model folder")
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidArgument(f"'file:{relative}' escapes the model folder")
    target = (base / relative).resolve()
    if not target.is_relative_to(base.resolve()):
        raise InvalidArgument(f"'file:{relative}' escapes the model folder")
    return target


def decode_upload(key: str, value: object) -> bytes:
    """A ``file:`` load parameter's contents: bytes (gRPC) or base64 text (HTTP)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise InvalidArgument(f"'{key}' must be base64-encoded file contents") from None
    raise InvalidArgument(f"'{key}' must be file contents (bytes, or base64 over HTTP)")


def write_uploads(name: str, files: Mapping[str, bytes]) -> Path:
    """A fresh model folder ``<tmp>/<name>`` holding ``files`` (keys without the ``file:`` prefix)."""
    base = Path(tempfile.mkdtemp(prefix="nereid-upload-")) / name
    base.mkdir()
    try:
        for relative, contents in files.items():
            target = confined(base, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(contents)
    except BaseException:
        shutil.rmtree(base.parent, ignore_errors=True)
        raise
    return base


def remove_upload(model_dir: Path) -> None:
    """Delete an upload folder made by :func:`write_uploads`."""
    if model_dir.parent.name.startswith("nereid-upload-"):
        shutil.rmtree(model_dir.parent, ignore_errors=True)


#: The load parameter that promotes or rolls back a model's canary instead of loading it.
ROUTING_ACTION = "routing_action"


@dataclass(slots=True)
class LoadParameters:
    """A load request's parameters, decoded the same way for HTTP and gRPC."""

    config: mc.ModelConfig | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    routing_action: str = ""


def load_parameters(params: Mapping[str, object]) -> LoadParameters:
    """``config`` (a JSON ModelConfig), ``file:<path>`` contents, or ``routing_action``."""
    out = LoadParameters()
    for key, value in params.items():
        if key == "config":
            if not isinstance(value, str):
                raise InvalidArgument("the 'config' parameter must be a JSON string")
            try:
                data = json.loads(value)
            except ValueError as exc:
                raise InvalidArgument(f"the 'config' parameter is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise InvalidArgument("the 'config' parameter must be a JSON object")
            out.config = config_from_dict(data, "load 'config'")
        elif key.startswith("file:"):
            out.files[key[len("file:") :]] = decode_upload(key, value)
        elif key == ROUTING_ACTION:
            if value not in ("promote", "rollback"):
                raise InvalidArgument(f"'{ROUTING_ACTION}' must be 'promote' or 'rollback', got {value!r}")
            out.routing_action = str(value)
    return out


def unload_dependents(params: Mapping[str, object]) -> bool:
    value = params.get("unload_dependents", False)
    if not isinstance(value, bool):
        raise InvalidArgument("'unload_dependents' must be a boolean")
    return value


class RepositoryPoller:
    """Poll mode: every ``interval`` seconds, apply added, changed and removed models."""

    def __init__(self, repository: ModelRepository, interval: float) -> None:
        self.repository = repository
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.repository.poll()
            except ServingError as exc:
                log.error("repository poll failed: %s", exc.message)
            except Exception:
                log.exception("repository poll failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
