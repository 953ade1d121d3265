"""Backend plugins by explicit registry: backend name -> factory.

A config selects its backend with ``backend: "<name>"`` or a Triton ``platform`` string.
Factories import their framework lazily, so a missing optional framework only fails the
models that need it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from nereid.backends.base import Backend
from nereid.server.errors import NotFound, Unavailable

BackendFactory = Callable[[], Backend]

# name -> "module:Class"; importing lazily keeps torch/tensorrt out of processes that never need them.
_BUILTIN: dict[str, str] = {
    "onnxruntime": "nereid.backends.onnxruntime:OnnxRuntimeBackend",
    "python": "nereid.backends.python.backend:PythonBackend",
    "pytorch": "nereid.backends.pytorch.backend:PyTorchBackend",
    "tensorrt": "nereid.backends.tensorrt.backend:TensorRTBackend",
    "llm": "nereid.backends.llm.backend:LLMBackend",
}
# Triton platform string -> backend name.
_PLATFORMS: dict[str, str] = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "torch_aoti": "pytorch",
    "tensorrt_plan": "tensorrt",
}

_factories: dict[str, BackendFactory] = {}
_instances: dict[str, Backend] = {}


def register(name: str, factory: BackendFactory, platforms: tuple[str, ...] = ()) -> None:
    """Register a backend factory (third-party plugins call this)."""
    _factories[name] = factory
    for platform in platforms:
        _PLATFORMS[platform] = name


def resolve_name(backend: str, platform: str) -> str:
    """The backend name a config selects; raises NotFound when neither field is known."""
    if backend:
        if backend in _factories or backend in _BUILTIN:
            return backend
        raise NotFound(f"unknown backend '{backend}'")
    if platform in _PLATFORMS:
        return _PLATFORMS[platform]
    if platform:
        raise NotFound(f"unknown platform '{platform}'")
    raise NotFound("config names neither 'backend' nor 'platform'")


def get(name: str) -> Backend:
    """The backend singleton for ``name``, created on first use."""
    if name in _instances:
        return _instances[name]
    factory = _factories.get(name)
    if factory is None:
        module_name, _, class_name = _BUILTIN[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise Unavailable(f"backend '{name}' is not installed: {exc}") from exc
        factory = getattr(module, class_name)
    backend = factory()
    _instances[name] = backend
    return backend
