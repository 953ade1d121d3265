"""Input and output ``reshape``: clients see the config's ``dims``, the backend the reshape.

Triton's ``ModelInput.reshape`` / ``ModelOutput.reshape``: a request's input of shape
``[batch, *dims]`` reaches the backend as ``[batch, *reshape]`` (the batch dimension kept, so
dynamic batching still concatenates along it), and an output the backend returns as
``[batch, *reshape]`` goes back to the client as ``[batch, *dims]``. The classic case is
``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``: clients send ``[batch, 1]``, the model takes
``[batch]``. A ``-1`` in ``reshape`` is inferred from the element count (one at most).
Decoupled models send their responses themselves, so their outputs are not reshaped back.
"""

from __future__ import annotations

import math
from dataclasses import replace

from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InternalError, InvalidArgument
from nereid.server.model_config import ConfigError, TensorSpec, output_specs
from nereid.server.types import InferRequest, InferResponse, Tensor


def _check(kind: str, index: int, tensor: mc.ModelInput | mc.ModelOutput, origin: str) -> tuple[int, ...]:
    shape, dims = tuple(tensor.reshape.shape), tuple(tensor.dims)
    where = f"{origin}: {kind}[{index}] '{tensor.name}' reshape {list(shape)}"
    if any(d < -1 or d == 0 for d in shape) or shape.count(-1) > 1:
        raise ConfigError(f"{where}: entries must be positive, with at most one -1")
    if -1 not in shape and -1 not in dims and math.prod(shape) != math.prod(dims):
        raise ConfigError(
            f"{where} holds {math.prod(shape)} elements but 'dims' {list(dims)} hold {math.prod(dims)}"
        )
    if (-1 in shape) != (-1 in dims):
        raise ConfigError(f"{where}: 'dims' {list(dims)} and the reshape must both be variable or both fixed")
    return shape


def backend_output_specs(config: mc.ModelConfig) -> tuple[TensorSpec, ...]:
    """The outputs as the backend returns them: reshaped outputs with their reshape dims."""
    reshapes = {t.name: tuple(t.reshape.shape) for t in config.output if t.HasField("reshape")}
    return tuple(replace(s, dims=reshapes.get(s.name, s.dims)) for s in output_specs(config))


class Reshaper:
    """The reshapes of one model version, checked at load (ConfigError names the tensor)."""

    def __init__(self, config: mc.ModelConfig, origin: str = "config") -> None:
        self.batched = config.max_batch_size > 0
        self.inputs = {
            t.name: _check("input", i, t, origin) for i, t in enumerate(config.input) if t.HasField("reshape")
        }
        self.outputs = {
            t.name: (_check("output", i, t, origin), tuple(t.dims))
            for i, t in enumerate(config.output)
            if t.HasField("reshape")
        }
        if self.outputs and config.model_transaction_policy.decoupled:
            name = next(iter(self.outputs))
            raise ConfigError(f"{origin}: output '{name}': 'reshape' is not supported on decoupled models")

    def __bool__(self) -> bool:
        return bool(self.inputs or self.outputs)

    def _shape(self, tensor: Tensor, target: tuple[int, ...]) -> tuple[int, ...]:
        lead = tensor.shape[:1] if self.batched else ()
        shape = (*lead, *target)
        if -1 in target:
            known = math.prod(d for d in shape if d != -1)
            missing = math.prod(tensor.shape) // known if known else 0
            shape = tuple(missing if d == -1 else d for d in shape)
        return shape

    def _reshaped(self, tensor: Tensor, target: tuple[int, ...]) -> Tensor | None:
        shape = self._shape(tensor, target)
        if math.prod(shape) != math.prod(tensor.shape):
            return None
        return Tensor(tensor.name, tensor.datatype, shape, tensor.data.reshape(shape), tensor.parameters)

    def to_backend(self, request: InferRequest) -> None:
        """Give the request's inputs their reshape shapes (the request's own tensors are kept)."""
        if not self.inputs:
            return
        inputs = []
        for tensor in request.inputs:
            target = self.inputs.get(tensor.name)
            if target is not None:
                reshaped = self._reshaped(tensor, target)
                if reshaped is None:
                    raise InvalidArgument(
                        f"input '{tensor.name}' of shape {list(tensor.shape)} cannot take the config's "
                        f"reshape {list(target)}"
                    )
                tensor = reshaped
            inputs.append(tensor)
        request.inputs = inputs

    def to_client(self, model: str, response: InferResponse) -> None:
        """Give reshaped outputs back the config's ``dims`` (an output that does not fit fails)."""
        if not self.outputs:
            return
        for index, tensor in enumerate(response.outputs):
            shapes = self.outputs.get(tensor.name)
            if shapes is None:
                continue
            reshape, dims = shapes
            reshaped = self._reshaped(tensor, dims)
            if reshaped is None:
                response.error = InternalError(
                    f"model '{model}' output '{tensor.name}' of shape {list(tensor.shape)} does not match "
                    f"its reshape {list(reshape)}"
                )
                return
            response.outputs[index] = reshaped
