"""The tensors the sequence batcher adds to a request, and the state it takes back.

Control inputs follow Triton: START is true on the first request, END on the last, READY on
every request the scheduler sends (Nereid sends no empty padding requests), CORRID carries the
correlation id. Implicit state: each request gets its sequence's current state as the state
input (the initial state on a START request) and the state output of its response becomes the
sequence's next state. Shapes are ``[1]`` per request, ``[1, 1]`` with a batch dimension.
"""

from __future__ import annotations

import numpy as np

from nereid.server.datatypes import NUMPY_DTYPES
from nereid.server.errors import InternalError, InvalidArgument
from nereid.server.sequence_config import SequenceSettings
from nereid.server.types import CorrelationId, InferRequest, InferResponse, SequenceFlags, Tensor

State = dict[str, np.ndarray]  # state input name -> value (with the batch dimension when batched)


class SequenceFeeder:
    """Adds control and state inputs to requests and reads state outputs back, for one model."""

    def __init__(
        self, model: str, settings: SequenceSettings, declared_outputs: set[str], batched: bool
    ) -> None:
        self.model = model
        self.controls = settings.controls
        self.states = settings.states
        self._shape = (1, 1) if batched else (1,)
        self._corrid = next((c for c in self.controls if c.kind == "CORRID"), None)
        # State outputs reach the client only when the config also lists them as outputs.
        self._hidden = {s.output_name for s in self.states} - declared_outputs
        self._values: dict[tuple[str, bool], np.ndarray] = {}
        for control in self.controls:
            if control.kind != "CORRID":
                for flag in (False, True):
                    value = np.full(self._shape, control.values[flag], dtype=NUMPY_DTYPES[control.datatype])
                    value.flags.writeable = False
                    self._values[control.name, flag] = value

    def check(self, flags: SequenceFlags) -> None:
        """Refuse a correlation id the model's CORRID input cannot carry (before queueing)."""
        corrid = self._corrid
        cid = flags.correlation_id
        if corrid is None or corrid.datatype == "BYTES":
            return
        if isinstance(cid, str):
            raise InvalidArgument(
                f"inference request to model '{self.model}' has string sequence id '{cid}', but the "
                f"model's CONTROL_SEQUENCE_CORRID input '{corrid.name}' is {corrid.datatype}: "
                "use an integer sequence id"
            )
        if cid > np.iinfo(NUMPY_DTYPES[corrid.datatype]).max:
            raise InvalidArgument(
                f"inference request to model '{self.model}' has sequence id {cid}, which does not fit the "
                f"model's {corrid.datatype} CONTROL_SEQUENCE_CORRID input '{corrid.name}'"
            )

    def initial_state(self) -> State:
        return {spec.input_name: spec.initial for spec in self.states}

    def prepare(self, request: InferRequest, state: State | None) -> None:
        """Append the control and state inputs to ``request`` (its flags are set)."""
        flags = request.sequence
        assert flags is not None
        added: list[Tensor] = []
        for control in self.controls:
            if control.kind == "CORRID":
                value = self._corrid_value(flags.correlation_id, control.datatype)
            else:
                on = {"START": flags.start, "END": flags.end, "READY": True}[control.kind]
                value = self._values[control.name, on]
            added.append(Tensor(control.name, control.datatype, self._shape, value))
        if state is not None:
            for spec in self.states:
                value = state[spec.input_name]
                added.append(Tensor(spec.input_name, spec.datatype, tuple(value.shape), value))
        request.inputs = [*request.inputs, *added]

    def absorb(self, response: InferResponse, state: State | None) -> State | None:
        """The sequence's next state from ``response`` (``state`` where it has no state output).

        ``state`` None: the sequence ends, nothing is kept. Takes the state outputs the config
        does not list out of the response; a state output of the wrong datatype fails it.
        """
        if not self.states:
            return state
        updated = dict(state) if state is not None else {}
        for spec in self.states:
            tensor = response.output(spec.output_name)
            if tensor is None:
                continue
            if tensor.datatype != spec.datatype:
                response.error = InternalError(
                    f"model '{self.model}' state output '{spec.output_name}' is {tensor.datatype}, "
                    f"but the config's sequence_batching state says {spec.datatype}"
                )
                return state
            updated[spec.input_name] = tensor.data
        if self._hidden:
            response.outputs = [t for t in response.outputs if t.name not in self._hidden]
        return updated if state is not None else None

    def _corrid_value(self, cid: CorrelationId, datatype: str) -> np.ndarray:
        if datatype == "BYTES":
            text = cid if isinstance(cid, str) else str(cid)
            return np.full(self._shape, text.encode(), dtype=object)
        return np.full(self._shape, cid, dtype=NUMPY_DTYPES[datatype])
