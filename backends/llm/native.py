"""The engine's C++ kernels (``csrc/``), compiled for this machine on first use and cached.

``load()`` builds the ``csrc/*.cpp`` files (paged decode attention, the fused layer ops, the Q8_0 and Q4_1 linears) with
torch's extension builder (ninja + the system C++ compiler, ``-O3 -march=native``) into torch's extension
cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and registers
``torch.ops.nereid_native.*``. The build is keyed by every ``csrc`` file (headers included) and the CPU's
instruction-set flags, so a cache shared between different machines never hands one a binary built for the
other. ``-ffp-contract=off`` keeps ``a * b + c`` two roundings, as PyTorch's elementwise ops compute it.
The first build takes ~20-60 s on 2 cores (``make serve`` / ``make test`` run it ahead:
``native.main()``); later loads take milliseconds. Where the build fails (no compiler),
``load()`` returns False once with the reason logged, and callers keep their pure-PyTorch paths.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_CSRC = Path(__file__).resolve().parent / "csrc"


def _build_tag() -> str:
    """A short hash of the kernels' files and the CPU's instruction-set flags (what -march=native targets)."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = ""
    digest = hashlib.sha256(flags.encode())
    for path in sorted(_CSRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


@functools.cache
def load() -> bool:
    """Build (once per source and CPU) and load the kernels; False, with the reason logged, if they can't."""
    if not sys.platform.startswith("linux"):
        log.info("native LLM kernels are built on Linux only; using PyTorch's")
        return False
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(
            name=f"nereid_native_{_build_tag()}",
            sources=[str(p) for p in sorted(_CSRC.glob("*.cpp"))],
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # a missing compiler or ninja, a failed build: keep serving without them
        log.warning(
            "native LLM kernels unavailable (%s); using PyTorch's", str(exc).strip().splitlines()[-1:]
        )
        return False
    return True


def paged_decode_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Each of q's rows (one decode token: [n, heads, head_dim]) attending to its sequence's cached context.

    kv_cache: [2, blocks, block_size, kv_heads, head_dim], float32 or bfloat16 like q; block_tables [n, m] and
    context_lens [n] int64. Reads the cache in place; returns [n, heads, head_dim]. Call only after `load()`.
    """
    return torch.ops.nereid_native.paged_decode_attention(q, kv_cache, block_tables, context_lens, scale)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of each row of x [tokens, hidden], rounded like `models.llama.RMSNorm`."""
    return torch.ops.nereid_native.rms_norm(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + delta, rms_norm(x + delta))``: the residual stream and the next sub-layer's input."""
    return torch.ops.nereid_native.add_rms_norm(x, delta, weight, eps)


def rope_write_kv(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    heads: int,
    kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of the fused projection's q and k; stores the rotated k and the v at
    `slot_mapping` in one layer's cache. Returns q [tokens, heads, head_dim] and k [tokens, kv_heads, head_dim].
    """
    return torch.ops.nereid_native.rope_write_kv(qkv, cos, sin, kv_cache, slot_mapping, heads, kv_heads)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` of the fused projection's output [tokens, 2 * intermediate]."""
    return torch.ops.nereid_native.silu_mul(gate_up)


def q8_0_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n_out: int) -> torch.Tensor:
    """``x @ W.T`` for x [M, K] (float32 or bfloat16, quantised per 32-block on the fly) and the N = `n_out`
    rows of W packed by `q8_0.pack`; [M, N] in x's dtype. Call after `load()`."""
    return torch.ops.nereid_native.q8_0_linear(x, weight, scales, n_out)


def q4_1_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n_out: int) -> torch.Tensor:
    """``x @ W.T`` for x [M, K] (float32 or bfloat16, quantised per 32-block on the fly) and the N = `n_out`
    rows of W packed by `q4_1.pack`; [M, N] in x's dtype. Call after `load()`."""
    return torch.ops.nereid_native.q4_1_linear(x, weight, scales, n_out)


def q8_0_amx_rows() -> int:
    """From how many rows of x `q8_0_linear` multiplies in bfloat16 on AMX tiles (0: never, on this CPU)."""
    return int(torch.ops.nereid_native.q8_0_amx_rows())


def main() -> None:
    """Build now (``make install`` / ``make test`` run this so that no model load waits for the compiler)."""
    logging.basicConfig(level=logging.INFO)
    print("native LLM kernels:", "built" if load() else "unavailable")
