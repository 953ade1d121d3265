"""Find and load a PyTorch model file: TorchScript, torch.export program or AOTInductor package.

All three are zip archives; the entries tell them apart, so a misnamed file still loads and a
file of the wrong kind (a ``torch.save`` checkpoint, garbage bytes) fails with a message that
names the model, the file and what to do.

* ``torchscript``: made by ``torch.jit.script(m).save(path)`` (or trace), loaded with
  ``torch.jit.load(path, map_location=device)``;
* ``torch.export``: made by ``torch.export.save(torch.export.export(m, args), path)``, loaded
  with ``torch.export.load(path).module()`` (moved to the device first);
* ``aotinductor``: made by ``torch._inductor.aoti_compile_and_package(ep)``, loaded with
  ``torch._inductor.aoti_load_package`` (Triton's ``torch_aoti`` platform); it runs on the
  device kind it was compiled for.
"""

from __future__ import annotations

import inspect
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nereid.backends.pytorch.naming import Argument
from nereid.server.errors import InvalidArgument, Unavailable

TORCHSCRIPT = "torchscript"
EXPORT = "torch.export"
AOTI = "aotinductor"

DEFAULT_FILENAME = "model.pt"
PT2_FILENAME = "model.pt2"


@dataclass(slots=True)
class Program:
    """A loaded model, callable with positional tensors."""

    fn: Callable[..., Any]
    format: str
    # forward's parameters without ``self``; None when the format does not record them.
    arguments: list[Argument] | None
    # Where inputs must go: the instance's device, or (KIND_MODEL) wherever the weights are.
    input_device: torch.device


def resolve_path(model: str, version_dir: Path, filename: str) -> Path:
    """The model file; ``model.pt`` falls back to ``model.pt2`` (Triton's torch_aoti default)."""
    path = version_dir / (filename or DEFAULT_FILENAME)
    if not path.exists() and path.name == DEFAULT_FILENAME and (version_dir / PT2_FILENAME).exists():
        path = version_dir / PT2_FILENAME
    if not path.is_file():
        extra = f" (or '{PT2_FILENAME}')" if path.name == DEFAULT_FILENAME else ""
        raise Unavailable(f"model '{model}': model file '{path}'{extra} does not exist")
    return path


def detect_format(model: str, path: Path) -> str:
    """Which loader fits ``path``, from the entries of its zip archive."""
    hint = (
        "save TorchScript with torch.jit.script(module).save(path) or a torch.export program with "
        "torch.export.save(torch.export.export(module, args), path)"
    )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidArgument(
            f"model '{model}': '{path}' is not a TorchScript or torch.export archive ({exc}); {hint}"
        ) from None
    parts = {part for name in names for part in name.split("/")[1:3]}
    if any("/data/aotinductor/" in f"/{name}" for name in names):
        return AOTI
    if "models" in parts and any(name.endswith("/archive_format") for name in names):
        return EXPORT
    if "code" in parts or any(name.endswith("/constants.pkl") for name in names):
        return TORCHSCRIPT
    if any(name.endswith("/data.pkl") for name in names):
        raise InvalidArgument(
            f"model '{model}': '{path}' is a torch.save() checkpoint (a pickled module or state_dict), "
            f"which carries no program to run; {hint}"
        )
    raise InvalidArgument(f"model '{model}': '{path}' is a zip archive but not a PyTorch model; {hint}")


def load_program(model: str, path: Path, fmt: str, kind: str, device: torch.device) -> Program:
    """Load ``path`` for one instance; raises InvalidArgument naming the model and the file."""
    try:
        if fmt == TORCHSCRIPT:
            return _torchscript(path, kind, device)
        if fmt == EXPORT:
            return _exported(path, device)
        return _aoti(model, path, kind, device)
    except (InvalidArgument, Unavailable):
        raise
    except Exception as exc:  # torch raises RuntimeError, ValueError, pickle errors, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"model '{model}': cannot load '{path}' as {fmt}: {first}") from exc


def _torchscript(path: Path, kind: str, device: torch.device) -> Program:
    # KIND_MODEL keeps the devices the model was saved with (Triton: "respects the device(s)
    # specified in the model"); inputs then go where the first parameter lives.
    module = torch.jit.load(str(path), map_location=None if kind == "KIND_MODEL" else device)
    module.eval()
    schema = module.forward.schema
    arguments = [Argument(a.name, a.default_value is None and not a.kwarg_only) for a in schema.arguments[1:]]
    input_device = _first_parameter_device(module) if kind == "KIND_MODEL" else device
    return Program(module, TORCHSCRIPT, arguments, input_device)


def _exported(path: Path, device: torch.device) -> Program:
    program = torch.export.load(str(path))
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    module = program.module()
    arguments = [
        Argument(p.name, p.default is inspect.Parameter.empty)
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return Program(module, EXPORT, arguments, device)


def _aoti(model: str, path: Path, kind: str, device: torch.device) -> Program:
    built_for = aoti_device(path)
    if kind != "KIND_MODEL" and built_for != device.type:
        raise InvalidArgument(
            f"model '{model}': '{path}' was compiled by AOTInductor for {built_for} but the instance runs on "
            f"{device}; recompile it for {device.type} or change the instance group kind"
        )
    target = device if built_for == device.type else torch.device(built_for)
    index = target.index if target.type == "cuda" and target.index is not None else -1
    compiled = torch._inductor.aoti_load_package(str(path), device_index=index)
    return Program(compiled, AOTI, None, target)


def aoti_device(path: Path) -> str:
    """The device type ("cpu", "cuda") an AOTInductor package was compiled for."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/data/aotinductor/" in f"/{name}" and name.endswith("_metadata.json"):
                return str(json.loads(archive.read(name)).get("AOTI_DEVICE_KEY") or "cpu")
    return "cpu"


def _first_parameter_device(module: torch.nn.Module) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")
