"""Import a user's ``model.py`` by file path and describe what goes wrong in it.

``import triton_python_backend_utils`` resolves because this module puts Nereid's
implementation into ``sys.modules`` under that name. Each import gets its own module name, so
every instance (as in Triton, where each instance is a process) has its own module globals.

Modules beside ``model.py`` import as in Triton (``import helpers``). A stub process puts the
model's folder on ``sys.path`` for good; in the server process the folder is on ``sys.path``
only while the model file itself executes, and the helper modules it imported are taken out of
``sys.modules`` again, so two models' ``helpers.py`` never meet and the server's path stays as
it was. In-process, a helper must therefore be imported at the top of ``model.py``, not lazily
inside ``execute``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from nereid.backends.python import pb_utils

PB_UTILS_NAME = "triton_python_backend_utils"
MODEL_CLASS = "TritonPythonModel"
_counter = itertools.count(1)
_scoped_imports = threading.RLock()


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
        with _folder_importable(path.parent, name):
            spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        raise ModelFileError(f"failed to import '{path}': {describe_exception(exc, path)}") from None
    return module


@contextmanager
def _folder_importable(folder: Path, keep: str) -> Iterator[None]:
    """``folder`` on ``sys.path`` while the block runs; then its modules leave ``sys.modules``.

    Nothing to do where the folder is already on the path (a stub process puts it there).
    """
    entry = str(folder)
    if entry in sys.path:
        yield
        return
    with _scoped_imports:  # models load in parallel: one model folder on the path at a time
        before = set(sys.modules)
        sys.path.insert(0, entry)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)
            for added in set(sys.modules) - before - {keep}:
                origin = getattr(sys.modules[added], "__file__", None)
                if origin and Path(origin).is_relative_to(folder):
                    del sys.modules[added]  # the model module keeps its own reference


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
