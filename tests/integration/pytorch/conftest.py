"""A server with PyTorch models for the integration tests; skipped where torch is not installed."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

try:
    import torch  # noqa: F401
except ImportError:  # the [torch] extra is optional
    collect_ignore_glob = ["test_*.py"]

ROOT = Path(__file__).resolve().parents[3]
HELPERS = ROOT / "tests" / "unit" / "backends" / "pytorch" / "torch_models.py"
EXAMPLE = ROOT / "model_repository" / "torch_linear"


def load_helpers() -> ModuleType:
    """The unit tests' ``torch_models.py`` (registered, since TorchScript reads its source)."""
    name = "nereid_tests_torch_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HELPERS)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tm() -> ModuleType:
    return load_helpers()


@pytest.fixture(scope="module")
def torch_server(tm: ModuleType, start_module_server: Callable, tmp_path_factory: pytest.TempPathFactory):
    """One server per module: the standard test models plus the example ``torch_linear``."""
    root = tmp_path_factory.mktemp("torch_models")
    tm.standard_models(root)
    shutil.copytree(EXAMPLE, root / "torch_linear")
    return start_module_server(root)
