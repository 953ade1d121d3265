"""Import a user's ``model.py`` by file path and describe what goes wrong in it.

``import triton_python_backend_utils`` resolves because this module puts Nereid's
implementation into ``sys.modules`` under that name; ``sys.path`` is never touched. Each
import gets its own module name, so every instance (as in Triton, where each instance is a
process) has its own module globals.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType

from nereid.backends.python import pb_utils

PB_UTILS_NAME = "triton_python_backend_utils"
MODEL_CLASS = "TritonPythonModel"
_counter = itertools.count(1)


class ModelFileError(Exception):
    """The model file cannot be imported or does not define a usable ``TritonPythonModel``."""


def install_pb_utils() -> None:
    if sys.modules.get(PB_UTILS_NAME) is not pb_utils:
        sys.modules[PB_UTILS_NAME] = pb_utils


def module_name(model: str, version: int | str, tag: str) -> str:
    """A fresh module name for one import of a model's file."""
    safe = re.sub(r"\W", "_", f"{model}_{version}_{tag}")
    return f"_nereid_python_model_{safe}_{next(_counter)}"


def import_model_file(path: Path, name: str) -> ModuleType:
    """Execute ``path`` as module ``name`` (registered in sys.modules while it lives)."""
    install_pb_utils()
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"cannot import '{path}': not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        raise ModelFileError(f"failed to import '{path}': {describe_exception(exc, path)}") from None
    return module


def model_class(module: ModuleType, path: Path) -> type:
    cls = getattr(module, MODEL_CLASS, None)
    if not isinstance(cls, type):
        raise ModelFileError(f"'{path}' does not define a class '{MODEL_CLASS}'")
    if not callable(getattr(cls, "execute", None)):
        raise ModelFileError(f"'{path}': class '{MODEL_CLASS}' has no execute(self, requests) method")
    return cls


def forget_module(name: str) -> None:
    sys.modules.pop(name, None)


def describe_exception(exc: BaseException, path: Path | str | None = None) -> str:
    """``Type: message``, plus the innermost line of the model file that raised, when there is one."""
    if isinstance(exc, pb_utils.TritonModelException):
        text = exc.message() or type(exc).__name__
    elif isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    if path is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        if frames:
            where = frames[-1]
            text += f" (at {Path(where.filename).name}:{where.lineno} in {where.name})"
    return text
