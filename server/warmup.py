"""Model warmup (Triton's ``model_warmup``): synthetic requests run on every instance before READY.

For each loaded version, after its instances exist and before the version turns READY, each
sample of ``config.model_warmup`` runs ``count`` times (at least once) on each instance, as
Triton does. A sample of ``batch_size`` N is N requests of one row each (no batch dimension
when ``max_batch_size`` is 0), executed in one call. Inputs come from:

* ``zero_data``: zeros; BYTES elements are empty (Triton's zero length prefixes);
* ``random_data``: random bytes viewed as the datatype; BYTES elements are empty, as in Triton;
* ``input_data_file``: ``<model>/warmup/<file>``, confined to that folder. Fixed-size types
  take the file's first ``elements * size`` bytes; BYTES files hold length-prefixed elements.

Warmup requests go straight to the instances, not through the scheduler, so a sequence
model's slots and state are untouched (Triton sends them to the backend directly too). A
failing sample, or bad warmup data, fails the load with an error naming the model, version,
sample and (where it is about one) input. Samples with ``batch_size`` 0 are skipped, as in Triton.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nereid.backends.base import ModelInstance
from nereid.proto import model_config_pb2 as mc
from nereid.server.datatypes import ELEMENT_SIZE, NUMPY_DTYPES, config_to_api, deserialize_bytes_tensor
from nereid.server.errors import InvalidArgument, ServingError
from nereid.server.model_config import TensorSpec
from nereid.server.paths import confine
from nereid.server.types import InferRequest, InferResponse, Tensor
from nereid.server.validation import validate_request

log = logging.getLogger(__name__)

#: The folder inside a model's folder that ``input_data_file`` names are relative to (Triton's).
WARMUP_FOLDER = "warmup"
#: How long a decoupled model may take to send a warmup request's final response.
RESPONSE_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One ``model_warmup`` entry, its inputs built once (every row shares them, as in Triton)."""

    name: str
    count: int
    batch_size: int
    inputs: tuple[Tensor, ...]

    def requests(self, model_name: str, version: str) -> list[InferRequest]:
        return [
            InferRequest(model_name, list(self.inputs), version, id=f"warmup:{self.name}")
            for _ in range(self.batch_size)
        ]


def warm_up(
    name: str,
    version: int,
    config: mc.ModelConfig,
    model_dir: Path,
    instances: list[ModelInstance],
    inputs: dict[str, TensorSpec],
    outputs: dict[str, TensorSpec],
) -> None:
    """Run every warmup sample on every instance; raises InvalidArgument on the first failure."""
    if not config.model_warmup or not instances:
        return
    prefix = f"model '{name}' version {version}"
    samples = build_samples(config, model_dir, prefix)
    for sample in samples:
        check = sample.requests(name, str(version))[0]
        check.inputs = [t for t in check.inputs if t.name in inputs]  # control inputs are not in the config
        try:
            validate_request(check, name, inputs, outputs, config.max_batch_size)
        except ServingError as exc:
            raise InvalidArgument(f"{prefix}: warmup sample '{sample.name}': {exc.message}") from None
    decoupled = config.model_transaction_policy.decoupled
    for instance in instances:
        for sample in samples:
            for iteration in range(1, sample.count + 1):
                log.debug("%s: warmup sample '%s', iteration %d", prefix, sample.name, iteration)
                errors = _run(instance, sample.requests(name, str(version)), decoupled)
                if errors:
                    raise InvalidArgument(
                        f"{prefix}: failed to run warmup sample '{sample.name}': {'; '.join(errors)}"
                    )


def build_samples(config: mc.ModelConfig, model_dir: Path, prefix: str) -> list[WarmupSample]:
    """The config's warmup samples with their input tensors; raises InvalidArgument naming the input."""
    samples: list[WarmupSample] = []
    mbs = config.max_batch_size
    for index, setting in enumerate(config.model_warmup):
        sample = setting.name or f"model_warmup[{index}]"
        if setting.batch_size == 0:
            log.debug("%s: skipping warmup sample '%s' of batch size 0", prefix, sample)
            continue
        if mbs == 0 and setting.batch_size != 1:
            raise InvalidArgument(
                f"{prefix}: warmup sample '{sample}': batch_size must be 1 for a model without "
                f"batching (max_batch_size 0), got {setting.batch_size}"
            )
        if mbs > 0 and setting.batch_size > mbs:
            raise InvalidArgument(
                f"{prefix}: warmup sample '{sample}': batch_size {setting.batch_size} is above "
                f"max_batch_size {mbs}"
            )
        tensors = []
        for input_name in sorted(setting.inputs):
            where = f"{prefix}: warmup sample '{sample}' input '{input_name}'"
            tensors.append(_tensor(input_name, setting.inputs[input_name], mbs, model_dir, where, index))
        samples.append(WarmupSample(sample, max(setting.count, 1), setting.batch_size, tuple(tensors)))
    return samples


def _tensor(
    name: str, data: mc.ModelWarmup.Input, mbs: int, model_dir: Path, where: str, index: int
) -> Tensor:
    try:
        datatype = config_to_api(mc.DataType.Name(data.data_type))
    except (KeyError, ValueError):
        raise InvalidArgument(f"{where}: 'data_type' must be set to a valid type") from None
    dims = tuple(int(d) for d in data.dims)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"{where}: warmup dims must all be fixed (no -1), got {list(dims)}")
    count = int(np.prod(dims, dtype=np.int64))
    shape = (1, *dims) if mbs > 0 else dims
    kind = data.WhichOneof("input_data_type")
    if kind is None:
        raise InvalidArgument(f"{where}: set one of zero_data, random_data or input_data_file")
    if kind == "input_data_file":
        field = f"model_warmup[{index}].inputs[{name}].input_data_file"
        try:
            # Kept inside the warmup folder itself, not just the model's.
            path = confine(model_dir / WARMUP_FOLDER, data.input_data_file, field)
            raw = path.read_bytes()
        except InvalidArgument:
            raise InvalidArgument(
                f"{where}: input_data_file '{data.input_data_file}' must name a file inside the "
                f"model's '{WARMUP_FOLDER}' folder"
            ) from None
        except OSError as exc:
            raise InvalidArgument(
                f"{where}: cannot read warmup file '{WARMUP_FOLDER}/{data.input_data_file}': "
                f"{exc.strerror or exc}"
            ) from None
        array = _from_file(datatype, count, raw, data.input_data_file, where)
    elif datatype == "BYTES":  # zero and random data alike: empty elements, as Triton builds them
        array = np.full(count, b"", dtype=object)
    elif kind == "zero_data":
        array = np.zeros(count, NUMPY_DTYPES[datatype])
    else:
        raw = np.random.default_rng().bytes(count * ELEMENT_SIZE[datatype])
        array = np.frombuffer(raw, NUMPY_DTYPES[datatype]).copy()
        if datatype == "BOOL":
            array = np.frombuffer(raw, np.uint8) % 2 == 1
    return Tensor(name, datatype, shape, array.reshape(shape))


def _from_file(datatype: str, count: int, raw: bytes, filename: str, where: str) -> np.ndarray:
    if datatype == "BYTES":
        try:
            return deserialize_bytes_tensor(raw, count)
        except ServingError as exc:
            raise InvalidArgument(f"{where}: warmup file '{filename}': {exc.message}") from None
    needed = count * ELEMENT_SIZE[datatype]
    if len(raw) < needed:
        raise InvalidArgument(
            f"{where}: warmup setting expects {needed} bytes, but the data provided from "
            f"'{filename}' only has {len(raw)} bytes"
        )
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    array = np.frombuffer(raw[:needed], dtype=dtype).copy()
    return array.astype(np.bool_) if datatype == "BOOL" else array


class _WarmupSender:
    """Collects a decoupled warmup request's responses on the backend's threads."""

    loop = None
    cancelled = False

    def __init__(self) -> None:
        self.done = threading.Event()
        self.errors: list[str] = []

    def send(self, response: InferResponse | None, final: bool) -> None:
        if response is not None and response.error is not None:
            self.errors.append(response.error.message)
        if final:
            self.done.set()


def _run(instance: ModelInstance, requests: list[InferRequest], decoupled: bool) -> list[str]:
    """Execute one warmup call; the error messages it produced (none when it succeeded)."""
    senders = [_WarmupSender() for _ in requests]
    for request, sender in zip(requests, senders, strict=True):
        request.sender = sender
    try:
        responses = instance.execute(requests)
    except Exception as exc:  # a backend's failure fails the sample, and so the load
        return [str(exc.message if isinstance(exc, ServingError) else exc) or type(exc).__name__]
    if decoupled:
        errors: list[str] = []
        for sender in senders:
            if not sender.done.wait(RESPONSE_TIMEOUT_S):
                return [f"no final response within {RESPONSE_TIMEOUT_S:.0f} s"]
            errors.extend(sender.errors)
        return errors
    if responses is None or len(responses) != len(requests):
        got = "no" if responses is None else len(responses)
        return [f"the model returned {got} responses for {len(requests)} requests"]
    return [r.error.message for r in responses if r.error is not None]
