"""Async-iterator plumbing for streamed answers (SSE, chunked TorchServe, gRPC streams)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


async def prime(source: AsyncIterator[T]) -> AsyncIterator[T]:
    """Pull the first item NOW, so errors raised before it (queue full, prompt too long) reach
    the caller as typed errors before any response header is sent; then replay the stream."""
    try:
        first = await anext(source)
    except StopAsyncIteration:
        first = _DONE  # type: ignore[assignment]

    async def replay() -> AsyncIterator[T]:
        try:
            if first is not _DONE:
                yield first
                async for item in source:
                    yield item
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    return replay()


async def merge(sources: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several streams as items arrive; yields (source index, item)."""
    if len(sources) == 1:
        async for item in sources[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                await queue.put((index, item))
        except Exception as exc:
            await queue.put((index, exc))
        finally:
            await queue.put((index, _DONE))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(sources)]
    try:
        left = len(sources)
        while left:
            index, item = await queue.get()
            if item is _DONE:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
