"""Per-model scheduling: a bounded queue in front of the model's instance pool.

Framework calls run in the pool's threads, never on the event loop. A full
queue is refused at once (:class:`Overloaded`) so clients back off instead of
piling up; a request whose deadline passes while it waits is dropped before
it reaches the model (:class:`DeadlineExceeded`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .errors import DeadlineExceeded, Overloaded

Batch = dict[str, np.ndarray]


class DirectScheduler:
    """Runs each request as its own call on one of ``instance_count`` threads."""

    def __init__(
        self,
        name: str,
        run: Callable[[Batch], Batch],
        instance_count: int,
        max_queue_size: int,
    ) -> None:
        self.name = name
        self._run = run
        self._pool = ThreadPoolExecutor(instance_count, thread_name_prefix=f"dlinfer-{name}")
        self._instance_count = instance_count
        self._max_pending = instance_count + max_queue_size
        self.pending = 0

    async def submit(self, inputs: Batch, deadline: float | None = None) -> Batch:
        """Run ``inputs`` through the model; ``deadline`` is a ``time.monotonic()`` value."""
        if self.pending >= self._max_pending:
            raise Overloaded(
                f"model {self.name!r} is overloaded: {self.pending} requests pending "
                f"(queue limit {self._max_pending - self._instance_count}); retry later"
            )
        self.pending += 1
        try:
            fut = asyncio.get_running_loop().run_in_executor(self._pool, self._run_before_deadline, inputs, deadline)
            if deadline is None:
                return await fut
            try:
                return await asyncio.wait_for(fut, max(deadline - time.monotonic(), 0))
            except TimeoutError:
                raise DeadlineExceeded(f"model {self.name!r}: request timed out") from None
        finally:
            self.pending -= 1

    def _run_before_deadline(self, inputs: Batch, deadline: float | None) -> Any:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded(f"model {self.name!r}: request expired while queued")
        return self._run(inputs)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
