"""bench/llm.py's Nereid side: a `nereid serve` subprocess on the example config, driven through the OpenAI
streaming API by a closed loop, with live KV-waste samples from `/metrics`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from harness import Nereid
from llm_workload import MODEL, ROOT, Request, Trace, WasteSamples

# ---- the Nereid server ---------------------------------------------------------------------------


def example_parameters() -> dict[str, str]:
    text = (ROOT / "model_repository" / MODEL / "config.pbtxt").read_text()
    return dict(re.findall(r'key:\s*"(\w+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text))


def repository(overrides: dict[str, str]) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """The example repository, or a temporary copy of its smollm2 folder with some parameters changed."""
    if not overrides:
        return ROOT / "model_repository", None
    tmp = tempfile.TemporaryDirectory(prefix="nereid-llm-bench-")
    dest = Path(tmp.name) / MODEL
    shutil.copytree(ROOT / "model_repository" / MODEL, dest)
    config = dest / "config.pbtxt"
    text = config.read_text()
    for key, value in overrides.items():
        text, n = re.subn(
            rf'(key:\s*"{key}"\s*value:\s*\{{\s*string_value:\s*")[^"]*(")', rf"\g<1>{value}\g<2>", text
        )
        if n == 0:
            text += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    config.write_text(text)
    return Path(tmp.name), tmp


class Server(Nereid):
    """``nereid serve`` on ``repo`` with only smollm2 loaded (bench/harness.py's launcher)."""

    name = "nereid-llm"

    def __init__(self, repo: Path) -> None:
        super().__init__([MODEL], repository=repo)

    @property
    def base(self) -> str:
        return f"http://{self.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics}/metrics"

    def num_kv_blocks(self) -> tuple[int, int]:
        """(blocks, block size) from the backend's 'engine ready' log line."""
        self.log.flush()
        self.log.seek(0)
        found = re.search(r"(\d+) KV blocks of (\d+) tokens", self.log.read())
        if found is None:
            raise RuntimeError("the server log has no 'N KV blocks of B tokens' line")
        return int(found.group(1)), int(found.group(2))


_METRIC = re.compile(r'^(nereid_llm_\w+)\{model="' + MODEL + r'",version="1"\} (\S+)$', re.M)


def parse_metrics(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in _METRIC.findall(text)}


class LiveState:
    """What the client knows of the requests of one level, for the KV-waste samples."""

    def __init__(self) -> None:
        self.prompt: dict[int, int] = {}
        self.received: dict[int, int] = {}
        self.finished: set[int] = set()
        self.total = 0

    def running_tokens(self) -> list[int]:
        """Tokens whose KV a running request holds after the step that sent its last token."""
        return [self.prompt[i] + k - 1 for i, k in self.received.items() if k and i not in self.finished]


async def sample_kv(
    session: Any, server: Server, state: LiveState, samples: WasteSamples, stop: asyncio.Event, base: dict
) -> None:
    num_blocks, _ = server.num_kv_blocks()
    while not stop.is_set():
        async with session.get(server.metrics_url) as resp:
            m = parse_metrics(await resp.text())
        running = state.running_tokens()  # snapshot right after the scrape arrived
        generated = m.get("nereid_llm_generation_tokens_total", -1) - base["generated"]
        if generated == state.total and m.get("nereid_llm_num_requests_running") == len(running) and running:
            samples.add(running, round(m["nereid_llm_kv_cache_usage_perc"] * num_blocks))
        else:
            samples.skipped += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def nereid_level(
    server: Any, requests: list[Request], concurrency: int, state: LiveState | None = None
) -> tuple[list[Trace], float, dict[str, Any]]:
    """The closed loop over the OpenAI streaming API; returns traces, wall seconds and KV-waste samples.

    ``server`` needs ``base`` (the HTTP root); a server whose ``metrics_url`` is None (a peer: llama.cpp,
    vLLM) is driven the same way without the KV samples and counters, and gets its ``extra_body`` fields."""
    import aiohttp
    import orjson

    state = state or LiveState()
    url = f"{server.base}/v1/completions"
    traces: list[Trace | None] = [None] * len(requests)
    queue = deque(enumerate(requests))
    clock = time.perf_counter
    # A server that closes a kept-alive connection after a stream (llama-server) gets a fresh one per request.
    connector = aiohttp.TCPConnector(limit=concurrency + 1, force_close=getattr(server, "force_close", False))
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    live = getattr(server, "metrics_url", None) is not None
    extra_body = getattr(server, "extra_body", {})
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        m0: dict[str, float] = {}
        if live:
            async with session.get(server.metrics_url) as resp:
                m0 = parse_metrics(await resp.text())
        base = {"generated": m0.get("nereid_llm_generation_tokens_total", 0.0)}
        samples = WasteSamples(server.num_kv_blocks()[1] if live else 1)

        async def one(index: int, req: Request) -> Trace:
            body = {
                "model": MODEL,
                "prompt": req.prompt,
                "max_tokens": req.max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "logprobs": 0,
                **extra_body,
            }
            state.prompt[index], state.received[index] = len(req.prompt), 0
            trace = Trace(clock(), [], len(req.prompt), req.max_tokens)
            async with session.post(
                url, data=orjson.dumps(body), headers={"content-type": "application/json"}
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:300]!r}")
                async for line in r.content:
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        break
                    now = clock()
                    chunk = orjson.loads(data)
                    if "error" in chunk:
                        raise RuntimeError(f"stream error: {chunk['error']}")
                    for choice in chunk.get("choices") or ():
                        n = len((choice.get("logprobs") or {}).get("tokens") or ()) or int(
                            bool(choice.get("text"))
                        )
                        trace.token_times += [now] * n
                        state.received[index] += n
                        state.total += n
            state.finished.add(index)
            return trace

        async def worker() -> None:
            while queue:
                index, req = queue.popleft()
                traces[index] = await one(index, req)

        stop = asyncio.Event()
        sampler = (
            asyncio.create_task(sample_kv(session, server, state, samples, stop, base)) if live else None
        )
        start = clock()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            seconds = clock() - start
            stop.set()
            if sampler is not None:
                await asyncio.gather(sampler, return_exceptions=True)
        m1: dict[str, float] = {}
        if live:
            async with session.get(server.metrics_url) as resp:
                m1 = parse_metrics(await resp.text())
    counters = {
        "preemptions": int(
            m1.get("nereid_llm_num_preemptions_total", 0) - m0.get("nereid_llm_num_preemptions_total", 0)
        ),
        "prefix_cache_hit_tokens": int(
            m1.get("nereid_llm_prefix_cache_hits_total", 0) - m0.get("nereid_llm_prefix_cache_hits_total", 0)
        ),
    }
    for t in traces:
        assert t is not None
        t.submitted -= start
        t.token_times = [x - start for x in t.token_times]
    done = [t for t in traces if t is not None]
    return done, seconds, ({"kv_live": samples.summary(), **counters} if live else {})
