"""A model's ``sequence_batching`` section, validated once at load into :class:`SequenceSettings`.

Triton's rules: control inputs (``CONTROL_SEQUENCE_START`` / ``END`` / ``READY`` with a
false/true pair in INT32, FP32 or BOOL, ``CONTROL_SEQUENCE_CORRID`` with an integer or string
type) and implicit ``state`` entries are tensors the server feeds the model; the client never
sends them, so they must not also be config inputs. Backends that bind inputs and outputs by the
config's names (PyTorch) or check outputs against it (Python) add :func:`sequence_inputs` and
:func:`state_outputs` to what the config declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nereid.proto import model_config_pb2 as mc
from nereid.server.datatypes import NUMPY_DTYPES, config_to_api, tensor_from_raw
from nereid.server.errors import ServingError
from nereid.server.model_config import ConfigError, TensorSpec

Kind = mc.ModelSequenceBatching.Control
DEFAULT_IDLE_US = 1_000_000  # Triton's default max_sequence_idle_microseconds
CORRID_TYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")
BACKLOG_PARAMETER = "max_sequence_backlog"


@dataclass(frozen=True, slots=True)
class Control:
    """One control input: ``kind`` is START, END, READY or CORRID; ``values`` is (false, true)."""

    name: str
    kind: str
    datatype: str
    values: tuple[Any, Any] = (0, 1)


@dataclass(frozen=True, slots=True)
class StateSpec:
    """An implicit state: fed as ``input_name``, read back from ``output_name``.

    ``initial`` is the value a sequence starts from, with the batch dimension of 1 when the
    model batches.
    """

    input_name: str
    output_name: str
    datatype: str
    dims: tuple[int, ...]
    initial: np.ndarray


@dataclass(frozen=True, slots=True)
class SequenceSettings:
    """What the sequence batcher needs from the config."""

    strategy: str  # "direct" | "oldest"
    idle_ns: int
    delay_ns: int
    slots_per_instance: int
    max_rows: int  # requests per execute (one per sequence)
    minimum_slot_utilization: float
    preferred: frozenset[int]
    controls: tuple[Control, ...]
    states: tuple[StateSpec, ...]
    max_backlog: int  # sequences waiting for a slot; 0: no limit (Triton's behaviour)

    @classmethod
    def from_config(cls, config: mc.ModelConfig, model_dir: Path | None, origin: str) -> SequenceSettings:
        """Validate ``config.sequence_batching``; raises ConfigError naming ``origin`` and the field."""
        batching = config.sequence_batching
        where = f"{origin}: sequence_batching"
        if batching.iterative_sequence:
            raise ConfigError(f"{where}.iterative_sequence is not supported by Nereid")
        if config.model_transaction_policy.decoupled and batching.state:
            raise ConfigError(f"{where}.state (implicit state) needs a model that is not decoupled")
        batch = max(1, config.max_batch_size)
        if batching.WhichOneof("strategy_choice") == "oldest":
            oldest = batching.oldest
            for size in oldest.preferred_batch_size:
                if not 1 <= size <= batch:
                    raise ConfigError(
                        f"{where}.oldest.preferred_batch_size {size} must be in [1, max_batch_size {batch}]"
                    )
            strategy, delay_us, utilization = "oldest", oldest.max_queue_delay_microseconds, 0.0
            slots = max(oldest.max_candidate_sequences, 0) or batch
            preferred = frozenset(oldest.preferred_batch_size)
        else:
            direct = batching.direct
            if not 0.0 <= direct.minimum_slot_utilization <= 1.0:
                raise ConfigError(f"{where}.direct.minimum_slot_utilization must be in [0, 1]")
            strategy, delay_us, slots = "direct", direct.max_queue_delay_microseconds, batch
            utilization, preferred = direct.minimum_slot_utilization, frozenset()
        declared = {tensor.name for tensor in config.input}
        controls = _controls(batching, declared, where)
        taken = declared | {c.name for c in controls}
        states = tuple(
            _state(state, index, config.max_batch_size, taken, model_dir, where)
            for index, state in enumerate(batching.state)
        )
        return cls(
            strategy=strategy,
            idle_ns=(batching.max_sequence_idle_microseconds or DEFAULT_IDLE_US) * 1000,
            delay_ns=delay_us * 1000,
            slots_per_instance=slots,
            max_rows=batch,
            minimum_slot_utilization=utilization,
            preferred=preferred,
            controls=controls,
            states=states,
            max_backlog=_backlog_limit(config, origin),
        )


def sequence_inputs(config: mc.ModelConfig) -> list[TensorSpec]:
    """The inputs the sequence batcher adds to every request: controls, then state inputs."""
    batching = config.sequence_batching
    specs = [
        TensorSpec(entry.name, _control_datatype(control), (1,))
        for entry in batching.control_input
        for control in entry.control[:1]
    ]
    specs += [_state_spec(state.input_name, state) for state in batching.state]
    return specs


def state_outputs(config: mc.ModelConfig) -> list[TensorSpec]:
    """The state outputs a sequence model returns besides its declared outputs."""
    return [_state_spec(state.output_name, state) for state in config.sequence_batching.state]


def _state_spec(name: str, state: mc.ModelSequenceBatching.State) -> TensorSpec:
    return TensorSpec(name, _api_type(state.data_type, name), tuple(state.dims))


def _api_type(data_type: int, where: str) -> str:
    type_name = mc.DataType.Name(data_type)
    try:
        return config_to_api(type_name)
    except (KeyError, ServingError):
        raise ConfigError(f"{where}: 'data_type' must be set (got {type_name})") from None


def _control_datatype(control: mc.ModelSequenceBatching.Control) -> str:
    if control.kind == Kind.CONTROL_SEQUENCE_CORRID:
        return config_to_api(mc.DataType.Name(control.data_type))
    if control.fp32_false_true:
        return "FP32"
    if control.bool_false_true:
        return "BOOL"
    return "INT32"


def _controls(batching: mc.ModelSequenceBatching, declared: set[str], where: str) -> tuple[Control, ...]:
    controls: list[Control] = []
    kinds: set[str] = set()
    for index, entry in enumerate(batching.control_input):
        here = f"{where}.control_input[{index}]"
        if not entry.name:
            raise ConfigError(f"{here}: 'name' is required")
        if entry.name in declared or any(c.name == entry.name for c in controls):
            raise ConfigError(
                f"{here} '{entry.name}': the name is already a model input or another control input "
                "(the server feeds control inputs; do not list them under 'input')"
            )
        if len(entry.control) != 1:
            raise ConfigError(f"{here} '{entry.name}': needs exactly one 'control', got {len(entry.control)}")
        control = entry.control[0]
        kind = Kind.Kind.Name(control.kind).removeprefix("CONTROL_SEQUENCE_")
        if kind in kinds:
            raise ConfigError(f"{here} '{entry.name}': more than one CONTROL_SEQUENCE_{kind} control input")
        kinds.add(kind)
        controls.append(_control(entry.name, kind, control, here))
    return tuple(controls)


def _control(name: str, kind: str, control: mc.ModelSequenceBatching.Control, here: str) -> Control:
    pairs = {
        "INT32": list(control.int32_false_true),
        "FP32": list(control.fp32_false_true),
        "BOOL": list(control.bool_false_true),
    }
    given = {datatype: values for datatype, values in pairs.items() if values}
    if kind == "CORRID":
        datatype = config_to_api(mc.DataType.Name(control.data_type)) if control.data_type else ""
        if datatype not in CORRID_TYPES or given:
            raise ConfigError(
                f"{here} '{name}': CONTROL_SEQUENCE_CORRID needs 'data_type' TYPE_UINT64, TYPE_INT64, "
                "TYPE_UINT32, TYPE_INT32 or TYPE_STRING and no false/true values"
            )
        return Control(name, kind, datatype)
    if len(given) != 1 or len(next(iter(given.values()))) != 2:
        raise ConfigError(
            f"{here} '{name}': CONTROL_SEQUENCE_{kind} needs exactly one of int32_false_true, "
            "fp32_false_true or bool_false_true, with two values [false, true]"
        )
    datatype, values = next(iter(given.items()))
    return Control(name, kind, datatype, (values[0], values[1]))


def _state(
    state: mc.ModelSequenceBatching.State,
    index: int,
    max_batch_size: int,
    taken: set[str],
    model_dir: Path | None,
    where: str,
) -> StateSpec:
    here = f"{where}.state[{index}]"
    if not state.input_name or not state.output_name:
        raise ConfigError(f"{here}: 'input_name' and 'output_name' are required")
    if state.input_name in taken:
        raise ConfigError(
            f"{here}: input_name '{state.input_name}' is already a model input or control input "
            "(the server feeds state inputs; do not list them under 'input')"
        )
    taken.add(state.input_name)
    datatype = _api_type(state.data_type, here)
    if not state.dims or any(d < -1 or d == 0 for d in state.dims):
        raise ConfigError(f"{here}: 'dims' must list -1 or positive sizes, got {list(state.dims)}")
    if len(state.initial_state) > 1:
        raise ConfigError(f"{here}: at most one 'initial_state' is supported")
    if state.initial_state:
        initial = _initial_value(state.initial_state[0], datatype, model_dir, here)
    else:  # Triton: zeros, with each variable dimension as 1
        shape = tuple(1 if d == -1 else d for d in state.dims)
        initial = _zeros(datatype, shape)
    if max_batch_size > 0:
        initial = initial.reshape((1, *initial.shape))
    return StateSpec(state.input_name, state.output_name, datatype, tuple(state.dims), initial)


def _initial_value(
    initial: mc.ModelSequenceBatching.InitialState, datatype: str, model_dir: Path | None, here: str
) -> np.ndarray:
    if initial.data_type and _api_type(initial.data_type, here) != datatype:
        raise ConfigError(f"{here}.initial_state: 'data_type' must match the state's {datatype}")
    shape = tuple(initial.dims)
    if any(d < 1 for d in shape):
        raise ConfigError(f"{here}.initial_state: 'dims' must be fixed positive sizes, got {list(shape)}")
    choice = initial.WhichOneof("state_data")
    if choice == "zero_data":
        return _zeros(datatype, shape)
    if choice != "data_file":
        raise ConfigError(f"{here}.initial_state: set 'zero_data' or 'data_file'")
    if model_dir is None:
        raise ConfigError(f"{here}.initial_state: 'data_file' needs the model's directory")
    path = model_dir / "initial_state" / initial.data_file
    try:
        raw = path.read_bytes()
        return tensor_from_raw(datatype, shape, raw).copy()
    except OSError as exc:
        raise ConfigError(f"{here}.initial_state: cannot read data_file '{path}': {exc}") from exc
    except ServingError as exc:
        raise ConfigError(f"{here}.initial_state: data_file '{path}': {exc.message}") from exc


def _zeros(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=NUMPY_DTYPES[datatype])


def _backlog_limit(config: mc.ModelConfig, origin: str) -> int:
    if BACKLOG_PARAMETER not in config.parameters:
        return 0
    text = config.parameters[BACKLOG_PARAMETER].string_value
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(
            f"{origin}: parameter '{BACKLOG_PARAMETER}' must be a non-negative integer, got {text!r}"
        )
    return value
