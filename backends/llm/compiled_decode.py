"""``compile: true``: the decode-only forward through ``torch.compile`` (Inductor's CPU C++ code, frozen weights).

A decode step runs ~25 small kernels per layer; eager PyTorch pays Python and dispatch for each, which at one
sequence is a third of a step. Compiling the whole decode forward fuses the elementwise work (RMSNorm, rotary,
SiLU, residual adds) into a few C++ loops per layer and, with Inductor's freezing, reorders the projection
weights into oneDNN's layout once (what `prepack` does by hand in eager mode). Paged attention stays one opaque
op (`attention.paged_decode_attention`), so the graph never depends on context lengths.

Only batches of decodes take the compiled path (prefill chunks and speculative verification run eagerly); the
graph is specialised for one sequence and dynamic in the batch size above it, and both graphs are compiled
at load (`warm_up`), so no request waits for the compiler. Output equals the eager model's up to the order
of floating-point accumulation (not bit-exact). float32 only: a frozen bfloat16 graph compiled after a float32 one
in the same process gave wrong tokens (torch 2.13), so the config refuses other dtypes. Measurements: bench/RESULTS.md ("Single-stream decode").
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable

import torch

from nereid.backends.llm.attention import AttentionMetadata
from nereid.backends.llm.models.llama import LlamaForCausalLM

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]


class CompiledDecode:
    """``model.forward`` for decode-only batches, compiled once; call it like the model."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        # Dynamo keeps compiled graphs per code object, up to its recompile limit (8); a private copy of
        # `forward`'s code gives each model its own cache, so several compiled models never evict each other
        # into eager mode or have their guards checked against one another's graphs.
        code = type(model).forward.__code__
        forward = types.FunctionType(code.replace(), type(model).forward.__globals__, "forward")
        self._compiled: Forward = torch.compile(types.MethodType(forward, model), options={"freezing": True})
        self.compile_seconds = 0.0

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        tables = meta.block_tables
        if tables.shape[1] < 2:  # one graph for every table width (a width of 1 would be specialised)
            meta.block_tables = torch.nn.functional.pad(tables, (0, 2 - tables.shape[1]))
        for tensor in (input_ids, positions, meta.slot_mapping, meta.block_tables, meta.context_lens):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        torch._dynamo.maybe_mark_dynamic(meta.block_tables, 1)
        return self._compiled(input_ids, positions, kv_cache, meta)

    @torch.inference_mode()
    def warm_up(
        self,
        kv_cache: torch.Tensor,
        block_size: int,
        native_decode: bool = False,
        batch_sizes: tuple[int, ...] = (1, 2),
    ) -> None:
        """Compile the graphs for `batch_sizes` now (one sequence, and the dynamic batch) on dummy decodes.

        Writes K/V into the first slots of block 0, which no sequence owns yet at load time.
        """
        start = time.perf_counter()
        device = kv_cache.device
        for n in batch_sizes:
            # Two tensors, not one passed twice: dynamo guards on inputs aliasing each other.
            ids = torch.zeros(n, dtype=torch.long, device=device)
            positions = torch.zeros(n, dtype=torch.long, device=device)
            meta = AttentionMetadata(
                slot_mapping=torch.arange(n, device=device),
                block_tables=torch.zeros(n, 2, dtype=torch.long, device=device),
                context_lens=positions + 1,
                query_start_loc=list(range(n + 1)),
                context_lens_cpu=[1] * n,
                num_decodes=n,
                block_size=block_size,
                native_decode=native_decode,
            )
            self(ids, positions, kv_cache, meta)
        self.compile_seconds = time.perf_counter() - start
