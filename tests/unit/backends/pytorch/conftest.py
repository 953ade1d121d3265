"""Fixtures for the PyTorch backend's unit tests; skipped where torch is not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

try:
    import torch  # noqa: F401
except ImportError:  # the [torch] extra is optional
    collect_ignore_glob = ["test_*.py"]

HELPERS = Path(__file__).with_name("torch_models.py")


def load_helpers() -> ModuleType:
    """``torch_models.py`` as a module (registered, since TorchScript reads its source)."""
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
