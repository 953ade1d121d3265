"""Several response streams read as one: the generations of one OpenAI call (``n``, ``best_of``, batches)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from nereid.server.types import InferResponse


async def merge(
    streams: list[AsyncGenerator[InferResponse, None]],
) -> AsyncGenerator[tuple[int, InferResponse], None]:
    """``(stream index, response)`` in arrival order. All streams start at once (each submits its request
    on its first read). Leaving early (close or an exception) cancels the streams not finished yet; a stream
    that sent its final response is read to its end first, so it ends as a success, not a cancellation."""
    reads = {asyncio.ensure_future(anext(s)): i for i, s in enumerate(streams)}
    try:
        while reads:
            done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            for read in sorted(done, key=reads.__getitem__):
                index = reads.pop(read)
                try:
                    response = read.result()
                except StopAsyncIteration:
                    continue
                if response.final:
                    await anext(streams[index], None)
                else:
                    reads[asyncio.ensure_future(anext(streams[index]))] = index
                yield index, response
    finally:
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        for stream in streams:
            await stream.aclose()
