"""Bidirectional request streams (gRPC ``ModelStreamInfer``): many requests, answered as they finish.

Each request starts as it arrives, so requests reach the scheduler in arrival
order (a sequence's requests stay in order), and each is answered as soon as it
finishes; ``answer`` must turn every failure of its request into an answer, so
one bad request never ends the stream. At most :data:`MAX_OUTSTANDING` requests
of a stream are running or answered but not yet sent: past that the stream is
not read, so a client that sends without reading its answers cannot grow the
server's memory (the transport's flow control pushes back on it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Requests of one stream running or waiting to be sent back, at most.
MAX_OUTSTANDING = 256


async def answer_stream(requests: AsyncIterator[bytes], answer: Callable[[bytes], Awaitable[T]]) -> AsyncIterator[T]:
    """The answers to ``requests`` in completion order; ends when the client has sent its last
    request and every answer is out. A broken request stream ends the call with its error."""
    answers: asyncio.Queue[tuple[T] | None] = asyncio.Queue()
    running: set[asyncio.Task[None]] = set()
    room = asyncio.Semaphore(MAX_OUTSTANDING)

    async def one(raw: bytes) -> None:
        await answers.put((await answer(raw),))

    async def read() -> None:
        try:
            async for raw in requests:
                await room.acquire()
                task = asyncio.create_task(one(raw))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*list(running))
        finally:
            await answers.put(None)

    reader = asyncio.create_task(read())
    try:
        while (item := await answers.get()) is not None:
            yield item[0]
            room.release()
        await reader
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()
