"""The ``llm`` backend: a decoupled model whose one instance owns an :class:`LLMEngine` and its driver thread.

Continuous batching happens inside the engine, not in Nereid's scheduler: ``execute`` only decodes requests
(on the scheduler's instance thread) and hands them to the driver, returning None at once; the driver streams
each request's tokens back through ``request.sender``. Config parameters are described in
:mod:`nereid.backends.llm.serving`, the request/response contract in :mod:`nereid.backends.llm.requests` and
:mod:`nereid.backends.llm.responses`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nereid.backends.base import Backend, InstanceContext, Model, ModelContext, ModelInstance
from nereid.backends.llm import serving
from nereid.backends.llm.driver import EngineDriver
from nereid.backends.llm.engine import LLMEngine
from nereid.backends.llm.metrics import EngineMetrics
from nereid.backends.llm.pooling import run_embed
from nereid.backends.llm.requests import parse
from nereid.backends.llm.tasks import TASK, TASKS, run_task
from nereid.backends.llm.tokenizer import Tokenizer
from nereid.proto import model_config_pb2 as mc
from nereid.server.embedding import EMBED_TASK, EmbeddingSpec, is_embedding
from nereid.server.errors import InvalidArgument, as_serving_error
from nereid.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)
T = TypeVar("T")


class LLMBackend(Backend):
    default_instance_count = 1
    path_parameters = serving.PATH_PARAMETERS

    def auto_complete_config(self, config: mc.ModelConfig, version_dir: Path) -> None:
        serving.auto_complete(config)

    def load_model(self, context: ModelContext) -> Model:
        config = context.config
        if not config.model_transaction_policy.decoupled:
            raise InvalidArgument(
                f"model '{context.name}': the llm backend needs 'model_transaction_policy {{ decoupled: true }}'"
            )
        if config.max_batch_size != 0:
            raise InvalidArgument(
                f"model '{context.name}': the llm backend batches inside its engine; set 'max_batch_size: 0'"
            )
        count = sum(g.count * max(1, len(g.gpus)) for g in config.instance_group)
        if count != 1:
            raise InvalidArgument(
                f"model '{context.name}': the llm backend serves exactly one instance, the config asks for {count}"
            )
        return LLMModel(context)


class LLMModel(Model):
    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return LLMInstance(self, context)


class LLMInstance(ModelInstance):
    """Owns the engine (on ``context.device``) and the one thread that drives it."""

    def __init__(self, model: Model, context: InstanceContext) -> None:
        super().__init__(model, context)
        ctx = model.context
        config = serving.engine_config(ctx, context)
        start = time.perf_counter()
        try:
            self.driver = EngineDriver(
                lambda: LLMEngine(config), lambda: EngineMetrics(ctx.name, str(ctx.version)), ctx.name
            )
        except ValueError as exc:
            hint = " (parameters kv_cache_bytes, kv_cache_memory_fraction)" if "KV cache" in str(exc) else ""
            raise InvalidArgument(f"model '{ctx.name}': {exc}{hint}") from None
        self.engine = self.driver.engine
        self.embedding = EmbeddingSpec.of(ctx.config, "last") if is_embedding(ctx.config) else None
        log.info(
            "model '%s' version %d: engine ready in %.1f s (%s, %d KV blocks of %d tokens, max_model_len %d)",
            ctx.name, ctx.version, time.perf_counter() - start, config.device,
            self.engine.block_manager.num_blocks, config.block_size, self.engine.max_model_len,
        )  # fmt: skip

    @property
    def tokenizer(self) -> Tokenizer:
        """Read-only use (encode, decode, chat templates) is safe from any thread."""
        return self.engine.tokenizer

    def execute(self, requests: list[InferRequest]) -> None:
        for request in requests:
            try:
                task = request.parameters.get(TASK)
                if task in TASKS or task == EMBED_TASK:  # answered at once, outside the engine's batches
                    response = self._run_task(request)
                    if request.sender is not None:
                        request.sender.send(response, final=True)
                    continue
                with self.timer.phase("input"):
                    decoded = parse(request, self.tokenizer)
                self.driver.submit(request, decoded)
            except Exception as exc:  # one bad request fails alone
                if request.sender is not None:
                    request.sender.send(InferResponse(id=request.id, error=as_serving_error(exc)), final=True)
        return None

    def _run_task(self, request: InferRequest) -> InferResponse:
        if request.parameters[TASK] != EMBED_TASK:
            return run_task(request, self.tokenizer, self.engine.max_model_len)
        spec = self.embedding
        if spec is None:
            raise InvalidArgument(f"model '{self.model.context.name}' is not an embedding model")
        return self.call(lambda engine: run_embed(request, engine, spec), timeout=300.0)

    def call(self, fn: Callable[[LLMEngine], T], timeout: float = 30.0) -> T:
        """Run ``fn(engine)`` on the driver thread between steps: the safe way to inspect the engine."""
        return self.driver.call(fn, timeout)

    def finalize(self) -> None:
        self.driver.stop()
