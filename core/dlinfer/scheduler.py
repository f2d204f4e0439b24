"""Per-model scheduling: a bounded queue in front of the model's instance pool.

Two schedulers share one :class:`InstancePool` (``instance_count`` worker
threads, one framework call per instance at a time, never on the event loop):

- :class:`DirectScheduler` runs each request as its own call; models that do
  not batch, or have no ``[dynamic_batching]`` table, use it.
- :class:`DynamicBatcher` merges queued requests whose non-batch shapes agree
  into one call (up to ``max_batch_size``, dispatching at once on a preferred
  size, waiting at most ``max_queue_delay_us`` for more) and splits the
  outputs back per request, in order.

A full queue is refused at once (:class:`Overloaded`) so clients back off
instead of piling up. "Full" is a count (``max_queue_size``) and a time: a
request is refused when the wait it would have, estimated from the model's
recent service times (:class:`WaitEstimate`), is over ``max_queue_wait_s``. The
time bound keeps admitted latency near the bound whatever the model's speed, so
under overload the queue does not grow into waits that outlast the clients'
own timeouts (work done for a client that gave up is goodput lost). Requests
admitted by a frontend but still being read or decoded count as ``pending``, so
a burst of large bodies cannot all pass admission while the queue looks short.

A request whose deadline passes while it waits is dropped from the queue
before it reaches the model (:class:`DeadlineExceeded`); a request whose
caller goes away (client disconnect cancels the handler) is dropped the same
way. The queues are shared with the instance threads, which
take their next call (or form their next batch) themselves as soon as one
returns; the event loop only adds requests, withdraws abandoned ones and
answers finished calls.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import numpy as np

from .errors import DeadlineExceeded, InferenceError, Overloaded, Unavailable

Batch = dict[str, np.ndarray]


class Observer(Protocol):
    """What a metrics or tracing plugin is told; every call is made on the event loop."""

    def queued(self, queue_s: float) -> None:
        """A request left the queue for an instance after ``queue_s`` seconds."""

    def executed(self, requests: int, samples: int, compute_s: float) -> None:
        """One framework call ran ``requests`` requests of ``samples`` batch rows in all."""

    def finished(self, failure: str | None, total_s: float) -> None:
        """A request was answered; ``failure`` is None on success, else a reason word."""


#: States of a :class:`Call`.
QUEUED, RUNNING, DONE, EXPIRED, WITHDRAWN = "queued", "running", "done", "expired", "withdrawn"


@attrs.define(eq=False)
class Call:
    """One framework call: waiting for an instance, running, or finished.

    ``on_done`` is called on ``loop`` once the call has run (``outputs`` or
    ``error`` set), was skipped because its deadline passed in the queue
    (``EXPIRED``), or was refused because the pool closed (``WITHDRAWN``).
    """

    inputs: Batch = attrs.field(repr=False)
    on_done: Callable[[Call], None] = attrs.field(repr=False)
    loop: asyncio.AbstractEventLoop = attrs.field(repr=False)
    deadline: float | None = None
    enqueued: float = attrs.field(factory=time.perf_counter)
    state: str = QUEUED
    outputs: Batch | None = attrs.field(default=None, repr=False)
    error: BaseException | None = None
    queue_s: float = 0.0
    compute_s: float = 0.0


class WaitEstimate:
    """How long a new request would wait, from recent service times (event loop only).

    ``per_unit_s`` is a moving average of the seconds one unit of queued work
    (a call for the direct scheduler, a batch row for the batcher) keeps an
    instance busy; the expected wait of a request is the work queued ahead of
    it spread over the instances. No estimate before the first call finishes.
    """

    #: Weight of the newest sample: about the last twenty calls count.
    ALPHA = 0.1

    def __init__(self, instance_count: int) -> None:
        self.instance_count = instance_count
        self.per_unit_s = 0.0

    def observe(self, units: int, compute_s: float) -> None:
        sample = compute_s / max(units, 1)
        self.per_unit_s = sample if not self.per_unit_s else self.per_unit_s + self.ALPHA * (sample - self.per_unit_s)

    def wait_s(self, units_ahead: int) -> float:
        return units_ahead * self.per_unit_s / self.instance_count


class _Admission:
    """What both schedulers share to admit or refuse a request: the count and wait bounds,
    the wait estimate and the requests admitted but not yet submitted."""

    def __init__(self, name: str, instance_count: int, max_queue_size: int, max_queue_wait_s: float) -> None:
        self.name = name
        self.max_queue_size = max_queue_size
        self.max_queue_wait_s = max_queue_wait_s
        self.estimate = WaitEstimate(instance_count)
        #: Requests admitted by a frontend and not yet submitted (body still being read or decoded).
        self.pending = 0
        self.observers: list[Observer] = []

    def _backlog(self) -> int:
        """Requests queued (not running)."""
        raise NotImplementedError

    def _work_ahead(self, ahead: int, pending: int) -> int:
        """Units of work (see :class:`WaitEstimate`) a new request would wait for."""
        raise NotImplementedError

    @property
    def queued(self) -> int:
        """Requests waiting for an instance or a batch, and admitted ones still being read."""
        return self._backlog() + self.pending

    def refuse_if_full(self, pending: int = 0) -> None:
        """Raise :class:`Overloaded` if the queue (plus ``pending`` requests about to join it) is
        full by count, or a new request would wait longer than ``max_queue_wait_s``."""
        ahead = self._backlog() + pending
        wait = self.estimate.wait_s(self._work_ahead(ahead, pending))
        if ahead >= self.max_queue_size:
            raise Overloaded(
                f"model {self.name!r} is overloaded: {ahead} requests queued (queue limit {self.max_queue_size}); "
                "retry later",
                retry_after_s=max(wait, 1.0),
            )
        if self.max_queue_wait_s and ahead and wait > self.max_queue_wait_s:
            raise Overloaded(
                f"model {self.name!r} is overloaded: a new request would wait about {wait * 1000:.0f} ms "
                f"(limit {self.max_queue_wait_s * 1000:.0f} ms, {ahead} requests queued); retry later",
                retry_after_s=wait,
            )


class Stopped(Exception):
    """Raised by a call source when its pool is closing: the worker exits."""


class InstancePool:
    """``instance_count`` worker threads running framework calls, never on the event loop.

    Each worker takes its next call itself as soon as the last one returns, with
    no round trip through the event loop (on a busy machine that round trip left
    instances idle while the loop waited for a core). By default calls come from
    one FIFO queue (:meth:`put`); the worker skips a call that was withdrawn (its
    caller went away) and one whose deadline passed while it waited, so neither
    spends compute. A batcher passes ``take`` instead and forms batches there.
    An abandoned call that already started keeps its instance until the
    framework returns.
    """

    def __init__(
        self,
        name: str,
        instance_count: int,
        run: Callable[[Batch], Batch],
        take: Callable[[float], Call | None] | None = None,
    ) -> None:
        self.instance_count = instance_count
        self._run = run
        self._take = take or self._take_queued
        self._counts_running = take is None
        self._calls: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        # Guards the state of queued calls and the two counters; held for a few instructions only.
        self._lock = threading.Lock()
        #: Calls queued and not yet taken by a worker.
        self.waiting = 0
        #: Calls of the queue a worker is running (including abandoned ones).
        self.running = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"dlinfer-{name}_{i}") for i in range(instance_count)
        ]
        for t in self._threads:
            t.start()

    @property
    def backlog(self) -> int:
        """Queued calls that must wait for an instance to finish."""
        return max(self.waiting - (self.instance_count - self.running), 0)

    def put(self, inputs: Batch, on_done: Callable[[Call], None], deadline: float | None = None) -> Call:
        """Queue a call; ``on_done(call)`` runs on the current event loop when it is settled."""
        if self._closed:
            raise Unavailable("the model is being unloaded")
        call = Call(inputs, on_done, asyncio.get_running_loop(), deadline)
        with self._lock:
            self.waiting += 1
        self._calls.put(call)
        return call

    def withdraw(self, call: Call) -> str:
        """Take ``call`` out of the queue if no worker has started it; returns its state before."""
        with self._lock:
            state = call.state
            if state == QUEUED:
                call.state = WITHDRAWN
                self.waiting -= 1
        return state

    def _take_queued(self, timeout: float) -> Call | None:
        try:
            call = self._calls.get(timeout=timeout)
        except queue.Empty:
            return None
        if call is None:
            raise Stopped
        with self._lock:
            if call.state != QUEUED:
                return None  # withdrawn: its caller went away
            self.waiting -= 1
            if call.deadline is not None and time.monotonic() >= call.deadline:
                call.state = EXPIRED
            else:
                call.state = RUNNING
                self.running += 1
        return call

    def _serve(self) -> None:
        main = threading.main_thread()
        while True:
            try:
                call = self._take(1.0)
            except Stopped:
                return
            if call is None:
                # Exit with the interpreter even if close() was never called.
                if self._closed or not main.is_alive():
                    return
                continue
            if call.state == RUNNING:
                t0 = time.perf_counter()
                call.queue_s = t0 - call.enqueued
                try:
                    call.outputs = self._run(call.inputs)
                except BaseException as exc:  # reported to the caller; the worker keeps serving
                    plain = isinstance(exc, Exception) and not isinstance(exc, StopIteration)
                    call.error = exc if plain else RuntimeError(f"{type(exc).__name__}: {exc}")
                call.compute_s = time.perf_counter() - t0
                with self._lock:
                    if self._counts_running:
                        self.running -= 1
                    call.state = DONE
            self._settle(call)

    @staticmethod
    def _settle(call: Call) -> None:
        try:
            call.loop.call_soon_threadsafe(call.on_done, call)
        except RuntimeError:  # the loop is closed: nobody waits for this call any more
            pass

    def refuse_queued(self, error: Exception) -> None:
        """Answer every call still queued with ``error``; running calls go on."""
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not None and self.withdraw(call) == QUEUED:
                call.error = error
                self._settle(call)

    def close(self) -> None:
        """Refuse queued calls, let running ones return, stop the workers.

        A ``take`` source must raise :class:`Stopped` from then on itself.
        """
        self._closed = True
        self.refuse_queued(Unavailable("the model is being unloaded"))
        for _ in self._threads:
            self._calls.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()


def _deadline_timeout(deadline: float | None) -> asyncio.Timeout:
    """A timeout context at ``deadline`` (a ``time.monotonic()`` value, the loop's clock)."""
    if deadline is None:
        return asyncio.timeout(None)
    loop = asyncio.get_running_loop()
    return asyncio.timeout_at(loop.time() + (deadline - time.monotonic()))


class DirectScheduler(_Admission):
    """Runs each request as its own call on a free instance, FIFO when all are busy."""

    def __init__(
        self,
        name: str,
        run: Callable[[Batch], Batch],
        instance_count: int,
        max_queue_size: int,
        max_queue_wait_s: float = 0.0,
    ) -> None:
        super().__init__(name, instance_count, max_queue_size, max_queue_wait_s)
        self.pool = InstancePool(name, instance_count, run)

    def _backlog(self) -> int:
        return self.pool.backlog

    def _work_ahead(self, ahead: int, pending: int) -> int:
        # Every instance busy: the new request waits for one of them too (calls are the unit).
        busy = self.pool.waiting + self.pool.running + pending >= self.pool.instance_count
        return ahead + busy

    async def submit(self, inputs: Batch, deadline: float | None = None) -> Batch:
        """Run ``inputs`` through the model; ``deadline`` is a ``time.monotonic()`` value."""
        self.refuse_if_full()
        fut: asyncio.Future[Batch] = asyncio.get_running_loop().create_future()
        call = self.pool.put(inputs, lambda c: self._done(c, fut), deadline)
        try:
            if deadline is None:
                return await fut
            async with _deadline_timeout(deadline):
                return await fut
        except TimeoutError:
            if self.pool.withdraw(call) in (QUEUED, EXPIRED):
                raise DeadlineExceeded(f"model {self.name!r}: request expired while queued") from None
            raise DeadlineExceeded(f"model {self.name!r}: deadline passed while the model was running") from None
        finally:
            if call.state == QUEUED:  # cancelled (the client went away) before an instance took it
                self.pool.withdraw(call)

    def _done(self, call: Call, fut: asyncio.Future[Batch]) -> None:
        """On the loop: record the call (also one whose caller stopped waiting) and answer the caller."""
        if call.state == DONE:
            self.estimate.observe(1, call.compute_s)
            for o in self.observers:
                o.queued(call.queue_s)
            if call.error is None:
                for o in self.observers:
                    o.executed(1, _rows(call.inputs), call.compute_s)
        if fut.done():
            return
        if call.state == EXPIRED:
            fut.set_exception(DeadlineExceeded(f"model {self.name!r}: request expired while queued"))
        elif call.error is not None:
            fut.set_exception(call.error)
        else:
            assert call.outputs is not None  # DONE without an error: the runner returned them
            fut.set_result(call.outputs)

    def refuse_queued(self, error: Exception) -> None:
        """Answer every request still waiting for an instance with ``error``; running ones go on."""
        self.pool.refuse_queued(error)

    async def aclose(self) -> None:
        """Nothing runs on the loop between requests."""

    def close(self) -> None:
        self.pool.close()


def _rows(inputs: Batch) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


@attrs.define(eq=False)
class _Queued:
    """One request waiting in a :class:`DynamicBatcher`."""

    inputs: Batch = attrs.field(repr=False)
    rows: int
    #: Requests merge only when every input agrees on name, dtype and non-batch shape;
    #: None: this request runs alone.
    key: tuple[Any, ...] | None
    future: asyncio.Future[Batch] = attrs.field(repr=False)
    loop: asyncio.AbstractEventLoop = attrs.field(repr=False)
    arrived: float
    deadline: float | None
    state: str = QUEUED
    queue_s: float = 0.0


def _merge_key(inputs: Batch) -> tuple[tuple[str, str, tuple[int, ...]], ...] | None:
    """What must agree for two requests to share a batch: names, dtypes, non-batch dimensions."""
    arrays = list(inputs.values())
    if not arrays or any(a.ndim == 0 for a in arrays):
        return None
    rows = arrays[0].shape[0]
    if any(a.shape[0] != rows for a in arrays):
        return None
    return tuple((name, inputs[name].dtype.str, inputs[name].shape[1:]) for name in sorted(inputs))


def _fail(future: asyncio.Future[Batch], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class DynamicBatcher(_Admission):
    """Merges concurrent requests into batches for a model that batches.

    Dispatch rule (Triton's): a batch leaves as soon as its row count is one of
    ``preferred_batch_size`` (default: ``max_batch_size``) or no further queued
    request fits; otherwise it waits for more requests until the oldest one has
    waited ``max_queue_delay_us``. With no delay a free instance takes whatever
    is queued at once, so a lone request never waits.

    The queue is shared with the instance threads under one condition: a free
    instance forms its next batch itself, waiting on the condition for requests
    or for the delay to run out, so a batch starts the moment an instance frees
    up. The event loop only appends requests, withdraws those whose caller went
    away, and answers finished batches.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[Batch], Batch],
        instance_count: int,
        max_queue_size: int,
        max_batch_size: int,
        preferred_batch_size: tuple[int, ...] = (),
        max_queue_delay_us: int = 0,
        max_queue_wait_s: float = 0.0,
    ) -> None:
        super().__init__(name, instance_count, max_queue_size, max_queue_wait_s)
        #: Batch rows queued (under the condition; read without it as an estimate).
        self._rows = 0
        self.max_batch_size = max_batch_size
        preferred = {p for p in preferred_batch_size if 0 < p <= max_batch_size}
        self.preferred = frozenset(preferred or {max_batch_size})
        self.cap = max(self.preferred)
        self.delay_s = max_queue_delay_us / 1e6
        self._queue: deque[_Queued] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.pool = InstancePool(name, instance_count, run, take=self._take)

    async def submit(self, inputs: Batch, deadline: float | None = None) -> Batch:
        """Queue ``inputs`` for the next batch; ``deadline`` is a ``time.monotonic()`` value."""
        if self._closed:
            raise Unavailable(f"model {self.name!r} is being unloaded")
        self.refuse_if_full()
        loop = asyncio.get_running_loop()
        item = _Queued(
            inputs, _rows(inputs), _merge_key(inputs), loop.create_future(), loop, time.monotonic(), deadline
        )
        with self._cond:
            self._queue.append(item)
            self._rows += item.rows
            self._cond.notify()
        try:
            if deadline is None:
                return await item.future
            async with _deadline_timeout(deadline):
                return await item.future
        except TimeoutError:
            raise DeadlineExceeded(f"model {self.name!r}: request timed out") from None
        finally:
            if item.state == QUEUED:  # cancelled or timed out before a batch took it
                with self._cond:
                    if item.state == QUEUED:
                        item.state = WITHDRAWN
                        self._queue.remove(item)  # dropped before any compute
                        self._rows -= item.rows

    def _backlog(self) -> int:
        return len(self._queue)

    def _work_ahead(self, ahead: int, pending: int) -> int:
        # Rows are the unit; pending requests count as one row each; with a queue, the instances
        # are busy: add a batch.
        return self._rows + pending + (self.cap if ahead else 0)

    # ------------------------------------------------ batching (instance threads)

    def _take(self, timeout: float) -> Call | None:
        """The next batch for a free instance, waiting up to ``timeout`` for one to be due."""
        with self._cond:
            end = time.monotonic() + timeout
            while True:
                if self._closed:
                    raise Stopped
                now = time.monotonic()
                self._drop_expired(now)
                wake = end
                if self._queue:
                    items, rows, room_left = self._gather()
                    wait_until = self._queue[0].arrived + self.delay_s
                    if rows in self.preferred or not room_left or now >= wait_until:
                        self._remove(items, now)
                        if self._queue:
                            self._cond.notify()  # another instance may take the rest
                        break
                    wake = min(wake, wait_until)
                if now >= end:
                    return None
                self._cond.wait(wake - now)
        try:
            if len(items) == 1:
                inputs = items[0].inputs
            else:
                inputs = {name: np.concatenate([it.inputs[name] for it in items]) for name in items[0].inputs}
        except Exception as exc:  # inputs that cannot be stacked: fail these requests, keep serving
            error = InferenceError(f"model {self.name!r}: cannot batch inputs: {exc}")
            for it in items:
                it.loop.call_soon_threadsafe(_fail, it.future, error)
            return None
        return Call(inputs, lambda call: self._answer(items, call), items[0].loop, state=RUNNING)

    def _drop_expired(self, now: float) -> None:
        """Fail queued requests whose deadline has passed (under the condition)."""
        if not any(it.deadline is not None and it.deadline <= now for it in self._queue):
            return
        alive: deque[_Queued] = deque()
        for it in self._queue:
            if it.deadline is not None and it.deadline <= now:
                it.state = EXPIRED
                error = DeadlineExceeded(f"model {self.name!r}: request expired while queued")
                it.loop.call_soon_threadsafe(_fail, it.future, error)
            else:
                alive.append(it)
        self._queue = alive
        self._rows = sum(it.rows for it in alive)

    def _gather(self) -> tuple[list[_Queued], int, bool]:
        """The oldest request plus the compatible ones after it, in order, within the cap.

        Returns the requests, their row count, and whether a further compatible
        request could still fit.
        """
        head = self._queue[0]
        items, rows = [head], head.rows
        if head.key is None or rows >= self.cap:
            return items, rows, False
        for it in list(self._queue)[1:]:
            if it.key != head.key:
                continue
            if rows + it.rows > self.cap:
                return items, rows, False
            items.append(it)
            rows += it.rows
            if rows >= self.cap:
                return items, rows, False
        return items, rows, True

    def _remove(self, items: list[_Queued], now: float) -> None:
        if len(items) == len(self._queue):
            self._queue.clear()
        else:
            taken = set(map(id, items))
            self._queue = deque(it for it in self._queue if id(it) not in taken)
        for it in items:
            it.state = RUNNING
            it.queue_s = now - it.arrived
            self._rows -= it.rows

    # ------------------------------------------------ answering (event loop)

    def _answer(self, items: list[_Queued], call: Call) -> None:
        """Hand each request its own rows of the batch's outputs, in order."""
        for o in self.observers:
            for it in items:
                o.queued(it.queue_s)
        exc = call.error
        outputs: Batch = call.outputs or {}
        if exc is None:
            rows = sum(it.rows for it in items)
            self.estimate.observe(rows, call.compute_s)
            for o in self.observers:
                o.executed(len(items), rows, call.compute_s)
            if len(items) > 1:
                bad = [k for k, v in outputs.items() if np.ndim(v) == 0 or np.shape(v)[0] != rows]
                if bad:
                    exc = InferenceError(
                        f"model {self.name!r} returned outputs {bad} without a batch dimension of {rows}; "
                        "it cannot be batched dynamically (remove [dynamic_batching] from its config)"
                    )
        start = 0
        for it in items:
            if it.future.done():
                pass  # cancelled or timed out while running: nobody waits for it
            elif exc is not None:
                it.future.set_exception(exc)
            elif len(items) == 1:
                it.future.set_result(outputs)
            else:
                it.future.set_result({k: v[start : start + it.rows] for k, v in outputs.items()})
            start += it.rows

    def refuse_queued(self, error: Exception) -> None:
        """Answer every request still waiting for a batch with ``error`` (on the event loop);
        running batches go on."""
        with self._cond:
            for it in self._queue:
                it.state = WITHDRAWN
                _fail(it.future, error)
            self._queue.clear()
            self._rows = 0

    async def aclose(self) -> None:
        """Stop the batcher; queued requests are refused."""
        with self._cond:
            self._closed = True
            self.refuse_queued(Unavailable(f"model {self.name!r} is being unloaded"))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.pool.close()


Scheduler = DirectScheduler | DynamicBatcher
