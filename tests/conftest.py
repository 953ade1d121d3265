"""Shared fixtures: tiny model repositories built in tmp_path and real servers on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from nereid.backends import registry
from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.server.datatypes import NUMPY_DTYPES
from nereid.server.serve import NereidServer
from nereid.server.settings import Settings
from nereid.server.types import InferRequest, InferResponse, Tensor

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
CONFIG_TYPES = {k: ("TYPE_STRING" if k == "BYTES" else f"TYPE_{k}") for k in [*ONNX_TYPES, "BF16"]}


def save_onnx(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


class RepoBuilder:
    """Writes small ONNX models and configs into one repository folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def config(
        self, name: str, text: str, filename: str = "config.pbtxt", versions: tuple[int, ...] = (1,)
    ) -> Path:
        """Write a config (and empty version folders) for ``name``."""
        folder = self.root / name
        for version in versions:
            (folder / str(version)).mkdir(parents=True, exist_ok=True)
        (folder / filename).write_text(text)
        return folder

    def identity(
        self,
        name: str,
        datatype: str = "FP32",
        max_batch_size: int = 8,
        dims: str = "[ -1 ]",
        versions: tuple[int, ...] = (1,),
        extra: str = "",
    ) -> Path:
        rank = len(dims.strip("[] ").split(","))
        shape = (
            ["batch", *[f"d{i}" for i in range(rank)]] if max_batch_size else [f"d{i}" for i in range(rank)]
        )
        graph = helper.make_graph(
            [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
            name,
            [helper.make_tensor_value_info("INPUT0", ONNX_TYPES[datatype], shape)],
            [helper.make_tensor_value_info("OUTPUT0", ONNX_TYPES[datatype], shape)],
        )
        for version in versions:
            save_onnx(graph, self.root / name / str(version) / "model.onnx")
        ctype = CONFIG_TYPES[datatype]
        return self.config(
            name,
            f"""
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: {ctype} dims: {dims} }} ]
output [ {{ name: "OUTPUT0" data_type: {ctype} dims: {dims} }} ]
{extra}
""",
        )

    def echo(
        self, name: str, datatypes: dict[str, str], max_batch_size: int = 0, dims: str = "[ -1 ]"
    ) -> Path:
        """A test-only echo model: each input ``X`` comes back as ``OUT_X``, unchanged."""
        (self.root / name / "1").mkdir(parents=True, exist_ok=True)
        inputs = ", ".join(
            f'{{ name: "{n}" data_type: {CONFIG_TYPES[d]} dims: {dims} }}' for n, d in datatypes.items()
        )
        outputs = ", ".join(
            f'{{ name: "OUT_{n}" data_type: {CONFIG_TYPES[d]} dims: {dims} }}' for n, d in datatypes.items()
        )
        return self.config(
            name,
            f"""
backend: "echo_test"
max_batch_size: {max_batch_size}
input [ {inputs} ]
output [ {outputs} ]
""",
        )

    def add_sub(
        self,
        name: str = "add_sub",
        datatype: str = "FP32",
        versions: tuple[int, ...] = (1,),
        extra: str = "",
        scale: float | None = None,
    ) -> Path:
        """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (times ``scale`` when given)."""
        t = ONNX_TYPES[datatype]
        io = lambda n: helper.make_tensor_value_info(n, t, ["batch", 16])  # noqa: E731
        nodes = [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ]
        for version in versions:
            graph_nodes = list(nodes)
            initializers = []
            if scale is not None or len(versions) > 1:
                factor = float(scale if scale is not None else version)
                graph_nodes = [
                    helper.make_node("Add", ["INPUT0", "INPUT1"], ["SUM"]),
                    helper.make_node("Sub", ["INPUT0", "INPUT1"], ["DIFF"]),
                    helper.make_node("Mul", ["SUM", "K"], ["OUTPUT0"]),
                    helper.make_node("Mul", ["DIFF", "K"], ["OUTPUT1"]),
                ]
                initializers = [helper.make_tensor("K", t, [], [factor])]
            graph = helper.make_graph(
                graph_nodes,
                name,
                [io("INPUT0"), io("INPUT1")],
                [io("OUTPUT0"), io("OUTPUT1")],
                initializer=initializers,
            )
            save_onnx(graph, self.root / name / str(version) / "model.onnx")
        ctype = CONFIG_TYPES[datatype]
        return self.config(
            name,
            f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: {ctype} dims: [ 16 ] }}, {{ name: "INPUT1" data_type: {ctype} dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: {ctype} dims: [ 16 ] }}, {{ name: "OUTPUT1" data_type: {ctype} dims: [ 16 ] }} ]
{extra}
""",
        )


class EchoBackend(Backend):
    """Test-only backend: returns every input as ``OUT_<name>``, byte for byte, any datatype."""

    def load_model(self, context: ModelContext) -> Model:
        return _EchoModel(context)


class _EchoModel(Model):
    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return _EchoInstance(self, context)


class _EchoInstance(ModelInstance):
    def execute(self, requests: list[InferRequest]) -> list[InferResponse]:
        return [
            InferResponse(outputs=[Tensor("OUT_" + t.name, t.datatype, t.shape, t.data) for t in r.inputs])
            for r in requests
        ]


registry.register("echo_test", EchoBackend)


@pytest.fixture
def repo(tmp_path: Path) -> RepoBuilder:
    root = tmp_path / "models"
    root.mkdir()
    return RepoBuilder(root)


@dataclass
class RunningServer:
    server: NereidServer
    loop: asyncio.AbstractEventLoop

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.server.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.server.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.ports['metrics']}/metrics"

    @property
    def core(self):
        return self.server.core

    def call(self, coro):
        """Run a coroutine on the server's loop (for state checks from tests)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


def _grpc_available() -> bool:
    try:
        import nereid.server.grpc.server  # noqa: F401
    except ImportError:
        return False
    return True


class ServerPool:
    """Starts real servers on free loopback ports, each in a background thread, and stops them."""

    def __init__(self) -> None:
        self.started: list[tuple[RunningServer, threading.Thread]] = []

    def __call__(self, root: Path, **overrides: object) -> RunningServer:
        settings = Settings(
            model_repository=[root],
            http_address="127.0.0.1",
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            exit_timeout_secs=5,
            drain_delay_secs=0,
            allow_grpc=_grpc_available(),
        )
        for key, value in overrides.items():
            setattr(settings, key, value)
        loop = asyncio.new_event_loop()
        server = NereidServer(settings)
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                await server.start()
            except BaseException as exc:  # surfaced to the test below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            await server.wait()
            await server.stop()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        ready.wait(120)
        if failure:
            thread.join(10)
            raise failure[0]
        running = RunningServer(server, loop)
        self.started.append((running, thread))
        return running

    def stop_all(self) -> None:
        for running, thread in self.started:
            running.loop.call_soon_threadsafe(running.server.request_stop)
            thread.join(30)


@pytest.fixture
def start_server() -> Iterator[Callable[..., RunningServer]]:
    """Start a server for one test."""
    pool = ServerPool()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def start_module_server() -> Iterator[Callable[..., RunningServer]]:
    """Start a server shared by the tests of one module."""
    pool = ServerPool()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def module_repo(tmp_path_factory: pytest.TempPathFactory) -> RepoBuilder:
    return RepoBuilder(tmp_path_factory.mktemp("models"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def sample_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random data covering a numeric datatype's whole range (integers) or sign and scale (floats)."""
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


@pytest.fixture
def sample(rng: np.random.Generator) -> Callable[[str, tuple[int, ...]], np.ndarray]:
    """``sample(datatype, shape)``: random numeric test data (see :func:`sample_array`)."""
    return lambda datatype, shape: sample_array(datatype, shape, rng)


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_llm(
    path: Path, corpus: list[str], vocab_size: int = 400, arch: str = "llama", **model_kw: object
) -> None:
    """A byte-level BPE tokenizer trained on ``corpus`` and a randomly initialised Llama or Qwen2.

    Saved in Hugging Face layout (``tokenizer.json``, ``tokenizer_config.json`` with a chat
    template, ``config.json``, ``model.safetensors``); ``model_kw`` go to the transformers config.
    """
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(path / "tokenizer.json"))
    config = {"eos_token": "<|endoftext|>", "bos_token": None, "chat_template": TINY_CHAT_TEMPLATE}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    config_cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    )
    torch.manual_seed(0)
    model = model_cls(config_cls(vocab_size=tok.get_vocab_size(), **model_kw))
    model.eval().save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_llm_builder() -> Callable[..., None]:
    """``tiny_llm_builder(path, corpus, vocab_size=400, arch="llama", **config)`` writes a tiny LLM."""
    return build_tiny_llm
