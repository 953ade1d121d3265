"""Private protobuf descriptor pool for Nereid's generated ``inference.*`` messages.

NVIDIA's ``tritonclient.grpc`` registers its own copies of ``grpc_service.proto`` and
``model_config.proto`` (same file names, same ``inference.*`` symbols) in protobuf's default
pool. Registering ours there as well would clash whenever both are imported in one process
(tests, clients embedded in the server), so ``proto/generate.py`` rewrites the generated
modules to add their files to :data:`POOL` and to build their classes with
:func:`build_messages` instead of the stock ``builder`` calls.

Messages from either pool are wire-compatible: serialize with one, parse with the other.
Pass :data:`POOL` wherever protobuf or gRPC would otherwise use the default pool, e.g. server
reflection (without it reflection cannot find ``inference.*``, or serves tritonclient's copy)::

    reflection.enable_server_reflection(names, server, pool=POOL)
"""

from __future__ import annotations

import threading
from typing import Any

from google.protobuf import descriptor_pool, symbol_database
from google.protobuf.internal import api_implementation
from google.protobuf.internal import builder as _builder

POOL = descriptor_pool.DescriptorPool()
"""Holds ``model_config.proto`` and ``grpc_service.proto`` once their ``_pb2`` modules are imported."""

_SYMBOLS = symbol_database.SymbolDatabase(pool=POOL)
_LOCK = threading.Lock()


def build_messages(file_descriptor: Any, module_name: str, module_globals: dict[str, Any]) -> None:
    """Create the descriptors and message classes of a generated module (protoc's builder calls).

    The stock builder also registers every class in ``symbol_database.Default()``. With the
    upb/C++ runtimes that only records the class, but the pure-Python runtime
    (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``) then adds our descriptors to the
    *default* pool by name, where tritonclient's file of the same name picks them up and
    overwrites their ``serialized_pb``. In that runtime the registration is pointed at a
    symbol database bound to :data:`POOL` for the duration of the build.
    """
    private = api_implementation.Type() == "python" and hasattr(_builder, "_sym_db")
    with _LOCK:
        saved = _builder._sym_db if private else None
        if private:
            _builder._sym_db = _SYMBOLS
        try:
            _builder.BuildMessageAndEnumDescriptors(file_descriptor, module_globals)
            _builder.BuildTopDescriptorsAndMessages(file_descriptor, module_name, module_globals)
        finally:
            if private:
                _builder._sym_db = saved


__all__ = ["POOL", "build_messages"]
