"""The engine's C++ kernels (``csrc/``), compiled for this machine on first use and cached.

``load()`` builds ``csrc/*.cpp`` (paged attention, the Q8_0 linear) with torch's extension builder (ninja + the system C++
compiler, ``-O3 -march=native``) into torch's extension cache (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) and registers ``torch.ops.nereid_native.*``. The build is keyed by the source
and the CPU's instruction-set flags, so a cache shared between different machines never hands one a binary
built for the other. The first build takes ~30-60 s on 2 cores (``make install`` runs it ahead:
``python -m nereid.backends.llm.native``); later loads take milliseconds. Where the build fails (no compiler),
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
_SOURCES = (_CSRC / "paged_attention.cpp", _CSRC / "q8_0_linear.cpp")


def _cpu_tag() -> str:
    """A short hash of the CPU's instruction-set flags (what -march=native compiles for)."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = ""
    return hashlib.sha256(flags.encode()).hexdigest()[:8]


@functools.cache
def load() -> bool:
    """Build (once per source and CPU) and load the kernels; False, with the reason logged, if they can't."""
    if not sys.platform.startswith("linux"):
        log.info("native LLM kernels are built on Linux only; using PyTorch's")
        return False
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(
            name=f"nereid_native_{_cpu_tag()}",
            sources=[str(s) for s in _SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
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


def available() -> bool:
    """Whether `torch.ops.nereid_native` is loaded (building it if needed)."""
    return load()


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


def q8_0_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n_out: int) -> torch.Tensor:
    """``x @ W.T`` for x [M, K] (float32 or bfloat16, quantised per 32-block on the fly) and the N = `n_out`
    rows of W packed by `q8_0.pack`; [M, N] in x's dtype. Call after `load()`."""
    return torch.ops.nereid_native.q8_0_linear(x, weight, scales, n_out)


def q8_0_amx_rows() -> int:
    """From how many rows of x `q8_0_linear` multiplies in bfloat16 on AMX tiles (0: never, on this CPU)."""
    return int(torch.ops.nereid_native.q8_0_amx_rows())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print("native LLM kernels:", "built" if load() else "unavailable")
