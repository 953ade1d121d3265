"""What the core answers about the server and its models, as typed values.

The core returns these; each transport's codec encodes them (JSON over HTTP, protobuf over
gRPC). Front-ends never index the core's answers by string keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a variable dimension, the batch dimension included


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """A model version's metadata; ``decoupled`` is not on the wire but tells front-ends how it answers."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    decoupled: bool = False

    def input(self, name: str) -> TensorMetadata | None:
        return next((t for t in self.inputs if t.name == name), None)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of the repository index: a version's state, or a model-level failure (version "")."""

    name: str
    version: str
    state: str  # READY | UNAVAILABLE | LOADING | UNLOADING
    reason: str = ""
