"""What Nereid does with every ModelConfig field: no config field is silently ignored.

Each field path of ``proto/model_config.proto`` (nested messages and map values included,
repeated fields without indices, e.g. ``instance_group.rate_limiter.resources.count``) has one
:class:`Rule`:

* ``IMPLEMENTED``: honoured as Triton documents it;
* ``REFUSED``: a config that sets it fails to load ("field 'x.y' is not supported by Nereid"),
  because ignoring it could change an answer or what is loaded;
* ``WARNED``: an optimisation or observability hint whose absence cannot change an answer; the
  load logs one warning naming it.

A rule may be implemented by some backends only (``backends``); for the others it is a hint and
warns. :func:`set_field_paths` walks the fields a parsed config actually sets;
``model_config.validate`` refuses and warns from :func:`check`. A unit test walks the proto's
descriptors, so a new proto field fails CI until it is classified here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from nereid.proto import model_config_pb2 as mc


class Support(enum.Enum):
    IMPLEMENTED = "implemented"
    REFUSED = "refused"
    WARNED = "warned"


@dataclass(frozen=True, slots=True)
class Rule:
    support: Support
    note: str = ""
    #: When set, only these backends implement the field; for the others it is WARNED.
    backends: frozenset[str] = frozenset()


def _ok(note: str = "", backends: tuple[str, ...] = ()) -> Rule:
    return Rule(Support.IMPLEMENTED, note, frozenset(backends))


def _no(note: str) -> Rule:
    return Rule(Support.REFUSED, note)


def _hint(note: str) -> Rule:
    return Rule(Support.WARNED, note)


# Triton platform strings -> backend names (for configs that name only the platform).
_PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch", "tensorrt_plan": "tensorrt"}
_ONNX = ("onnxruntime",)
_QUEUE_POLICY = {
    "timeout_action": _ok("REJECT or DELAY"),
    "default_timeout_microseconds": _ok(),
    "allow_timeout_override": _ok(),
    "max_queue_size": _ok(),
}
_ACCELERATOR_NOTE = "onnxruntime adds the TensorRT execution provider for name 'tensorrt'"
_BATCH_INPUT_NOTE = "onnxruntime; other backends fail the load"
_GRAPH_SPEC_NOTE = "CUDA graphs are an optimisation; no backend captures them"

#: Every ModelConfig field path -> what Nereid does with it.
TABLE: dict[str, Rule] = {
    "name": _ok("must match the model folder"),
    "platform": _ok(),
    "backend": _ok(),
    "runtime": _no("backend shared libraries are not loaded; name the backend with 'backend'"),
    "version_policy": _ok(),
    "version_policy.latest": _ok(),
    "version_policy.latest.num_versions": _ok(),
    "version_policy.all": _ok(),
    "version_policy.specific": _ok(),
    "version_policy.specific.versions": _ok(),
    "max_batch_size": _ok(),
    "input": _ok(),
    "input.name": _ok(),
    "input.data_type": _ok(),
    "input.format": _ok("informational, as in Triton: served in the model config"),
    "input.dims": _ok(),
    "input.reshape": _ok(),
    "input.reshape.shape": _ok("the backend receives this shape (batch dimension kept)"),
    "input.is_shape_tensor": _no("TensorRT shape tensors"),
    "input.allow_ragged_batch": _ok("onnxruntime and python; other backends fail the load"),
    "input.optional": _ok(),
    "input.is_non_linear_format_io": _no("TensorRT non-linear I/O formats"),
    "output": _ok(),
    "output.name": _ok(),
    "output.data_type": _ok(),
    "output.dims": _ok(),
    "output.reshape": _ok(),
    "output.reshape.shape": _ok("the backend returns this shape; clients see 'dims'"),
    "output.label_filename": _ok("labels of the classification extension, inside the model folder"),
    "output.is_shape_tensor": _no("TensorRT shape tensors"),
    "output.is_non_linear_format_io": _no("TensorRT non-linear I/O formats"),
    "batch_input": _ok(_BATCH_INPUT_NOTE),
    "batch_input.kind": _ok(_BATCH_INPUT_NOTE),
    "batch_input.target_name": _ok(_BATCH_INPUT_NOTE),
    "batch_input.data_type": _ok("TYPE_INT32 or TYPE_FP32"),
    "batch_input.source_input": _ok(_BATCH_INPUT_NOTE),
    "batch_output": _ok(_BATCH_INPUT_NOTE),
    "batch_output.target_name": _ok(_BATCH_INPUT_NOTE),
    "batch_output.kind": _ok("BATCH_SCATTER_WITH_INPUT_SHAPE"),
    "batch_output.source_input": _ok(_BATCH_INPUT_NOTE),
    "optimization": _ok(),
    "optimization.graph": _ok("", _ONNX),
    "optimization.graph.level": _ok("onnxruntime graph optimisation level", _ONNX),
    "optimization.priority": _hint("CUDA stream priority"),
    "optimization.cuda": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.graphs": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.busy_wait_events": _hint("CUDA event busy-waiting"),
    "optimization.cuda.graph_spec": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.graph_spec.batch_size": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.graph_spec.input": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.graph_spec.input.dim": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.graph_spec.graph_lower_bound": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.graph_spec.graph_lower_bound.batch_size": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.graph_spec.graph_lower_bound.input": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.graph_spec.graph_lower_bound.input.dim": _hint(_GRAPH_SPEC_NOTE),
    "optimization.cuda.output_copy_stream": _hint("a separate CUDA stream for output copies"),
    "optimization.execution_accelerators": _ok("", _ONNX),
    "optimization.execution_accelerators.gpu_execution_accelerator": _ok(_ACCELERATOR_NOTE, _ONNX),
    "optimization.execution_accelerators.gpu_execution_accelerator.name": _ok(_ACCELERATOR_NOTE, _ONNX),
    "optimization.execution_accelerators.gpu_execution_accelerator.parameters": _ok(
        "TensorRT provider options", _ONNX
    ),
    "optimization.execution_accelerators.cpu_execution_accelerator": _hint("CPU accelerators (OpenVINO)"),
    "optimization.execution_accelerators.cpu_execution_accelerator.name": _hint(
        "CPU accelerators (OpenVINO)"
    ),
    "optimization.execution_accelerators.cpu_execution_accelerator.parameters": _hint(
        "CPU accelerators (OpenVINO)"
    ),
    "optimization.input_pinned_memory": _hint("pinned host memory for inputs"),
    "optimization.input_pinned_memory.enable": _hint("pinned host memory for inputs"),
    "optimization.output_pinned_memory": _hint("pinned host memory for outputs"),
    "optimization.output_pinned_memory.enable": _hint("pinned host memory for outputs"),
    "optimization.gather_kernel_buffer_threshold": _hint("GPU gather kernel for input copies"),
    "optimization.eager_batching": _hint("eager batching"),
    "dynamic_batching": _ok(),
    "dynamic_batching.preferred_batch_size": _ok(),
    "dynamic_batching.max_queue_delay_microseconds": _ok(),
    "dynamic_batching.preserve_ordering": _ok("not for decoupled models, as in Triton"),
    "dynamic_batching.priority_levels": _ok(),
    "dynamic_batching.default_priority_level": _ok(),
    "dynamic_batching.default_queue_policy": _ok(),
    **{f"dynamic_batching.default_queue_policy.{k}": v for k, v in _QUEUE_POLICY.items()},
    "dynamic_batching.priority_queue_policy": _ok(),
    **{f"dynamic_batching.priority_queue_policy.{k}": v for k, v in _QUEUE_POLICY.items()},
    "sequence_batching": _ok(),
    "sequence_batching.direct": _ok(),
    "sequence_batching.direct.max_queue_delay_microseconds": _ok(),
    "sequence_batching.direct.minimum_slot_utilization": _ok(),
    "sequence_batching.oldest": _ok(),
    "sequence_batching.oldest.max_candidate_sequences": _ok(),
    "sequence_batching.oldest.preferred_batch_size": _ok(),
    "sequence_batching.oldest.max_queue_delay_microseconds": _ok(),
    "sequence_batching.oldest.preserve_ordering": _hint(
        "a sequence's own requests still run in order; across sequences, responses may finish out of order"
    ),
    "sequence_batching.max_sequence_idle_microseconds": _ok(),
    "sequence_batching.control_input": _ok(),
    "sequence_batching.control_input.name": _ok(),
    "sequence_batching.control_input.control": _ok(),
    "sequence_batching.control_input.control.kind": _ok(),
    "sequence_batching.control_input.control.int32_false_true": _ok(),
    "sequence_batching.control_input.control.fp32_false_true": _ok(),
    "sequence_batching.control_input.control.bool_false_true": _ok(),
    "sequence_batching.control_input.control.data_type": _ok(),
    "sequence_batching.state": _ok("implicit state"),
    "sequence_batching.state.input_name": _ok(),
    "sequence_batching.state.output_name": _ok(),
    "sequence_batching.state.data_type": _ok(),
    "sequence_batching.state.dims": _ok(),
    "sequence_batching.state.initial_state": _ok(),
    "sequence_batching.state.initial_state.data_type": _ok(),
    "sequence_batching.state.initial_state.dims": _ok(),
    "sequence_batching.state.initial_state.zero_data": _ok(),
    "sequence_batching.state.initial_state.data_file": _ok(),
    "sequence_batching.state.initial_state.name": _ok(),
    "sequence_batching.state.use_same_buffer_for_input_output": _hint("a GPU memory optimisation"),
    "sequence_batching.state.use_growable_memory": _hint("a GPU memory optimisation"),
    "sequence_batching.iterative_sequence": _no("iterative sequences"),
    "ensemble_scheduling": _ok(),
    "ensemble_scheduling.step": _ok(),
    "ensemble_scheduling.step.model_name": _ok(),
    "ensemble_scheduling.step.model_version": _ok(),
    "ensemble_scheduling.step.input_map": _ok(),
    "ensemble_scheduling.step.output_map": _ok(),
    "ensemble_scheduling.step.model_namespace": _no("model namespaces"),
    "ensemble_scheduling.step.when": _ok("Nereid's conditional steps (field 1000)"),
    "ensemble_scheduling.step.when.tensor": _ok(),
    "ensemble_scheduling.step.when.equals": _ok(),
    "ensemble_scheduling.step.when.otherwise": _ok(),
    "ensemble_scheduling.max_inflight_responses": _hint("back-pressure on decoupled steps"),
    "instance_group": _ok(),
    "instance_group.name": _ok(),
    "instance_group.kind": _ok("KIND_AUTO, KIND_CPU, KIND_GPU, KIND_MODEL"),
    "instance_group.count": _ok(),
    "instance_group.rate_limiter": _ok("with --rate-limit execution_count"),
    "instance_group.rate_limiter.resources": _ok(),
    "instance_group.rate_limiter.resources.name": _ok(),
    "instance_group.rate_limiter.resources.global": _ok(),
    "instance_group.rate_limiter.resources.count": _ok(),
    "instance_group.rate_limiter.priority": _ok(),
    "instance_group.gpus": _ok(),
    "instance_group.secondary_devices": _no("secondary devices (NVDLA)"),
    "instance_group.secondary_devices.kind": _no("secondary devices (NVDLA)"),
    "instance_group.secondary_devices.device_id": _no("secondary devices (NVDLA)"),
    "instance_group.profile": _ok("TensorRT only, and only profile '0' (others fail the load)"),
    "instance_group.passive": _ok("loaded and initialized, given no requests"),
    "instance_group.host_policy": _hint("NUMA host policies"),
    "default_model_filename": _ok(),
    "cc_model_filenames": _no("per compute capability model files"),
    "metric_tags": _hint("extra metric labels"),
    "parameters": _ok("read by each backend"),
    "parameters.string_value": _ok(),
    "model_warmup": _ok(),
    "model_warmup.name": _ok(),
    "model_warmup.batch_size": _ok(),
    "model_warmup.inputs": _ok(),
    "model_warmup.inputs.data_type": _ok(),
    "model_warmup.inputs.dims": _ok(),
    "model_warmup.inputs.zero_data": _ok(),
    "model_warmup.inputs.random_data": _ok(),
    "model_warmup.inputs.input_data_file": _ok(),
    "model_warmup.count": _ok(),
    "model_operations": _no("custom operation libraries"),
    "model_operations.op_library_filename": _no("custom operation libraries"),
    "model_transaction_policy": _ok(),
    "model_transaction_policy.decoupled": _ok(),
    "model_repository_agents": _no("repository agents (checksum, decryption)"),
    "model_repository_agents.agents": _no("repository agents (checksum, decryption)"),
    "model_repository_agents.agents.name": _no("repository agents (checksum, decryption)"),
    "model_repository_agents.agents.parameters": _no("repository agents (checksum, decryption)"),
    "response_cache": _ok(),
    "response_cache.enable": _ok(),
    "model_metrics": _hint("per-model metric options"),
    "model_metrics.metric_control": _hint("per-model metric options"),
    "model_metrics.metric_control.metric_identifier": _hint("per-model metric options"),
    "model_metrics.metric_control.metric_identifier.family": _hint("per-model metric options"),
    "model_metrics.metric_control.histogram_options": _hint("per-model metric options"),
    "model_metrics.metric_control.histogram_options.buckets": _hint("per-model metric options"),
}


def _value_type(field: FieldDescriptor) -> FieldDescriptor | None:
    """The descriptor whose fields nest under ``field``: its message, or a map's value message."""
    message = field.message_type
    if message is None:
        return None
    if message.GetOptions().map_entry:
        value = message.fields_by_name["value"]
        return value if value.message_type is not None else None
    return field


def set_field_paths(message: Message, prefix: str = "") -> Iterator[str]:
    """The field paths ``message`` sets (proto3 scalars at their default count as unset)."""
    for field, value in message.ListFields():
        path = prefix + field.name
        yield path
        nested = _value_type(field)
        if nested is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            yield from set_field_paths(item, path + ".")


def backend_of(config: mc.ModelConfig) -> str:
    return config.backend or _PLATFORMS.get(config.platform, config.platform)


def effective(rule: Rule, backend: str) -> Support:
    if rule.support is Support.IMPLEMENTED and rule.backends and backend not in rule.backends:
        return Support.WARNED
    return rule.support


def check(config: mc.ModelConfig) -> tuple[list[str], list[str]]:
    """The refused and the warned field paths ``config`` sets, each once, in walk order."""
    backend = backend_of(config)
    refused: dict[str, None] = {}
    warned: dict[str, None] = {}
    for path in set_field_paths(config):
        rule = TABLE.get(path, Rule(Support.REFUSED))
        support = effective(rule, backend)
        if support is Support.REFUSED:
            refused[path] = None
        elif support is Support.WARNED:
            warned[path] = None
    return list(refused), list(warned)


def refusal(path: str) -> str:
    """The load error's text for a refused field."""
    note = TABLE[path].note if path in TABLE else "not in Nereid's support table"
    return f"field '{path}' is not supported by Nereid ({note})"


def warning(path: str, backend: str) -> str:
    """The load warning's text for a field Nereid does not act on."""
    rule = TABLE[path]
    if rule.backends and backend not in rule.backends:
        where = f"backend '{backend}' (only {', '.join(sorted(rule.backends))} acts on it)"
    else:
        where = f"Nereid ({rule.note})" if rule.note else "Nereid"
    return f"field '{path}' is not acted on by {where}; answers are the same without it"


def markdown() -> str:
    """The README's table of refused and warned fields (everything else is implemented)."""
    lines = ["| field | Nereid | why |", "|---|---|---|"]
    for path, rule in TABLE.items():
        if rule.support is not Support.IMPLEMENTED or rule.backends:
            what = rule.support.value
            if rule.backends:
                what = f"implemented by {', '.join(sorted(rule.backends))}; warned elsewhere"
            lines.append(f"| `{path}` | {what} | {rule.note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
