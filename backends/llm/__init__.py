"""Paged-KV LLM engine in plain PyTorch: vLLM's ideas, single-owner and synchronous.

The request path, in order: `engine.LLMEngine.add_request` → `scheduler.Scheduler.schedule` (with
`block_manager.BlockManager`) → `model_runner.ModelRunner.execute` (model + `attention.AttentionMetadata`,
then `sampler.Sampler`) → stop rules and `detokenizer.IncrementalDetokenizer` in `LLMEngine.step`.
"""

from nereid.backends.llm.config import EngineConfig
from nereid.backends.llm.engine import LLMEngine
from nereid.backends.llm.outputs import EngineStats, RequestOutput
from nereid.backends.llm.sampling import SamplingParams
from nereid.backends.llm.sequence import SampleLogprobs

__all__ = ["EngineConfig", "EngineStats", "LLMEngine", "RequestOutput", "SampleLogprobs", "SamplingParams"]
