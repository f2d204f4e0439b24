"""Sequence batching: the scheduler of stateful models (``[sequence_batching]``, as Triton's).

A stateful model keeps state between the requests of one sequence (a client's
``sequence_id``), so those requests must reach it in order and on the same
instance, and the model must be told where a sequence begins and ends. The
:class:`SequenceBatcher` gives each instance a fixed number of slots; a
sequence takes a slot with its first request (``sequence_start``) and keeps it
until its last request (``sequence_end``) has run or it has been idle for
``max_sequence_idle_microseconds``. New sequences wait for a free slot, in
arrival order, bounded by the model's queue limits like any queued request.

Each instance thread forms its next call from the oldest waiting request of
each of its sequences (one request per sequence at a time, so a sequence's
requests run in order), merged into one batch when the model batches, and fills
the control inputs the config names: START, END, READY (``[batch, 1]`` of the
configured false/true values) and CORRID (the sequence id). Clients never send
them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from .datatypes import V2_TO_NUMPY
from .errors import DeadlineExceeded, InferenceError, InvalidInput, Unavailable
from .model import SEQUENCE_CORRID, SEQUENCE_END, SEQUENCE_READY, SEQUENCE_START, SequenceBatching
from .scheduler import QUEUED, RUNNING, WITHDRAWN, Batch, _Admission, _deadline_timeout, _fail, _merge_key, _rows

#: A sequence id as clients give it: a positive integer (uint64) or a non-empty string.
SequenceId = int | str


@attrs.frozen
class SequenceArgs:
    """The sequence parameters of one request."""

    id: SequenceId
    start: bool = False
    end: bool = False


def sequence_args(model: str, parameters: Mapping[str, Any]) -> SequenceArgs:
    """Read ``sequence_id``, ``sequence_start`` and ``sequence_end`` off a request's parameters
    (V2 JSON ``parameters`` or the gRPC ``parameters`` map, as tritonclient sends them)."""
    sid = parameters.get("sequence_id")
    if sid is None or sid == 0 or sid == "":
        raise InvalidInput(
            f"inference request to model {model!r} must specify a non-zero or non-empty sequence_id: "
            "the model is stateful ([sequence_batching])"
        )
    if isinstance(sid, bool) or not isinstance(sid, int | str) or (isinstance(sid, int) and not 0 < sid < 2**64):
        raise InvalidInput(f"parameter 'sequence_id' must be an unsigned 64-bit integer or a string, got {sid!r}")
    flags = {}
    for key in ("sequence_start", "sequence_end"):
        value = parameters.get(key, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter {key!r} must be true or false, got {value!r}")
        flags[key] = value
    return SequenceArgs(sid, flags["sequence_start"], flags["sequence_end"])


@attrs.define(eq=False)
class _Request:
    """One request of a sequence, waiting for its slot's instance or running there."""

    inputs: Batch = attrs.field(repr=False)
    args: SequenceArgs
    rows: int
    future: asyncio.Future[Batch] = attrs.field(repr=False)
    loop: asyncio.AbstractEventLoop = attrs.field(repr=False)
    arrived: float
    deadline: float | None
    state: str = QUEUED
    queue_s: float = 0.0


@attrs.define(eq=False)
class _Sequence:
    """A live sequence: its queued requests, and the instance and slot it holds (None while it
    waits for a free slot)."""

    id: SequenceId
    requests: deque[_Request] = attrs.field(factory=deque)
    instance: int | None = None
    slot: int = -1
    #: A request of it is running: the next one waits for it (order within a sequence).
    running: bool = False
    #: Its END request has been queued: further requests need a new START.
    ending: bool = False
    last_seen: float = attrs.field(factory=time.monotonic)


class SequenceBatcher(_Admission):
    """Runs a stateful model: each sequence on one instance slot, its requests in order,
    with the control inputs filled (see the module docstring)."""

    def __init__(
        self,
        name: str,
        run: Callable[[Batch], Batch],
        instance_count: int,
        max_queue_size: int,
        max_batch_size: int,
        config: SequenceBatching,
        max_queue_wait_s: float = 0.0,
    ) -> None:
        super().__init__(name, instance_count, max_queue_size, max_queue_wait_s)
        self.model = name.partition(":")[0]
        self._run = run
        self.max_batch_size = max_batch_size
        self.config = config
        self.oldest = config.strategy == "oldest"
        per_instance = config.max_candidate_sequences if self.oldest else 0
        self.slots_per_instance = per_instance or max(1, max_batch_size)
        self.idle_s = config.max_sequence_idle_microseconds / 1e6
        self._slots: list[list[_Sequence | None]] = [[None] * self.slots_per_instance for _ in range(instance_count)]
        #: Live sequences by id, with or without a slot.
        self._sequences: dict[SequenceId, _Sequence] = {}
        #: Sequences waiting for a free slot, oldest first.
        self._waiting: deque[_Sequence] = deque()
        #: Requests queued (not running), in all sequences.
        self._queued = 0
        self._running = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"dlinfer-{name}_{i}") for i in range(instance_count)
        ]
        for t in self._threads:
            t.start()

    @property
    def capacity(self) -> int:
        """Sequences the model holds at once; more wait for a slot."""
        return len(self._slots) * self.slots_per_instance

    @property
    def active(self) -> int:
        """Live sequences (holding a slot or waiting for one)."""
        return len(self._sequences)

    def _backlog(self) -> int:
        return self._queued

    def _work_ahead(self, ahead: int, pending: int) -> int:
        busy = self._running + self._queued + pending >= len(self._slots)
        return ahead + busy

    # ------------------------------------------------------------ submitting (event loop)

    async def submit(
        self, inputs: Batch, deadline: float | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Batch:
        """Queue a request of a sequence (its ``parameters`` carry the sequence id and flags)."""
        args = sequence_args(self.model, parameters or {})
        if self._closed:
            raise Unavailable(f"model {self.name!r} is being unloaded")
        self._check_corrid(args.id)
        self.refuse_if_full()
        loop = asyncio.get_running_loop()
        item = _Request(inputs, args, _rows(inputs), loop.create_future(), loop, time.monotonic(), deadline)
        with self._cond:
            seq = self._sequences.get(args.id)
            if seq is None or (seq.ending and not args.start):
                if not args.start:
                    state = "has ended" if seq is not None else "is not active (never started, ended or idle too long)"
                    raise InvalidInput(
                        f"inference request for sequence {args.id!r} to model {self.model!r} must specify "
                        f"sequence_start on the first request of the sequence: the sequence {state}"
                    )
                seq = _Sequence(args.id)
                self._sequences[args.id] = seq
                self._place(seq)
            seq.ending = args.end
            seq.last_seen = item.arrived
            seq.requests.append(item)
            self._queued += 1
            self._cond.notify_all()
        try:
            if deadline is None:
                return await item.future
            async with _deadline_timeout(deadline):
                return await item.future
        except TimeoutError:
            raise DeadlineExceeded(f"model {self.name!r}: request of sequence {args.id!r} timed out") from None
        finally:
            if item.state == QUEUED:  # cancelled or timed out before its instance took it
                with self._cond:
                    if item.state == QUEUED:
                        item.state = WITHDRAWN
                        seq.requests.remove(item)
                        self._queued -= 1

    def _check_corrid(self, sid: SequenceId) -> None:
        for control in self.config.control_input:
            if control.kind == SEQUENCE_CORRID and control.data_type != "BYTES" and isinstance(sid, str):
                raise InvalidInput(
                    f"model {self.model!r} takes the sequence id as {control.data_type} (input {control.name!r}): "
                    f"sequence_id must be an integer, got {sid!r}"
                )
            if control.kind == SEQUENCE_CORRID and isinstance(sid, int) and control.data_type != "BYTES":
                bounds = np.iinfo(V2_TO_NUMPY[control.data_type])
                if not bounds.min <= sid <= bounds.max:  # else it fails its whole batch in the model call
                    raise InvalidInput(
                        f"sequence_id {sid} does not fit CORRID's {control.data_type} (input {control.name!r}) "
                        f"of model {self.model!r}: at most {bounds.max}"
                    )

    def _place(self, seq: _Sequence) -> None:
        """Give ``seq`` a free slot on the least loaded instance, or queue it for one (under the condition)."""
        best: tuple[int, int, int] | None = None
        for i, slots in enumerate(self._slots):
            free = [j for j, s in enumerate(slots) if s is None]
            if free and (best is None or len(free) > best[0]):
                best = (len(free), i, free[0])
        if best is None:
            self._waiting.append(seq)
            return
        _, seq.instance, seq.slot = best
        self._slots[seq.instance][seq.slot] = seq

    def _release(self, seq: _Sequence) -> None:
        """Free ``seq``'s slot and hand it to the oldest waiting sequence (under the condition)."""
        if self._sequences.get(seq.id) is seq:
            del self._sequences[seq.id]
        if seq.instance is None:
            self._waiting.remove(seq)
            return
        self._slots[seq.instance][seq.slot] = None
        if self._waiting:
            nxt = self._waiting.popleft()
            nxt.instance, nxt.slot = seq.instance, seq.slot
            self._slots[seq.instance][seq.slot] = nxt
            self._cond.notify_all()

    # ------------------------------------------------------------ running (instance threads)

    def _serve(self, instance: int) -> None:
        main = threading.main_thread()
        while True:
            with self._cond:
                batch = self._next_batch(instance)
            if batch is None:
                if self._closed or not main.is_alive():
                    return
                continue
            self._execute(instance, batch)

    def _next_batch(self, instance: int) -> list[_Request] | None:
        """The oldest queued request of each of this instance's sequences that are ready, merged
        while compatible and within ``max_batch_size`` rows; None after a wait with nothing to do."""
        now = time.monotonic()
        self._reap_idle(now)
        heads = [(s, s.requests[0]) for s in self._slots[instance] if s is not None and s.requests and not s.running]
        if self.oldest:
            heads.sort(key=lambda h: h[1].arrived)
        batch: list[_Request] = []
        cap = max(1, self.max_batch_size)
        key = None
        rows = 0
        for seq, req in heads:
            if req.deadline is not None and req.deadline <= now:
                seq.requests.popleft()
                self._queued -= 1
                req.state = WITHDRAWN
                req.loop.call_soon_threadsafe(
                    _fail, req.future, DeadlineExceeded(f"model {self.name!r}: request expired while queued")
                )
                continue
            if batch:
                if not self.max_batch_size or _merge_key(req.inputs) != key or key is None or rows + req.rows > cap:
                    continue
            else:
                key = _merge_key(req.inputs)
            seq.requests.popleft()
            seq.running = True
            self._queued -= 1
            req.state = RUNNING
            req.queue_s = now - req.arrived
            batch.append(req)
            rows += req.rows
        if batch:
            self._running += 1
            return batch
        if self._closed:
            return None
        self._cond.wait(self._next_expiry(now))
        return None

    def _reap_idle(self, now: float) -> None:
        """Release sequences with nothing queued or running that have been idle too long."""
        for seq in list(self._sequences.values()):
            if not seq.requests and not seq.running and now - seq.last_seen >= self.idle_s:
                self._release(seq)

    def _next_expiry(self, now: float) -> float:
        idle = [s.last_seen + self.idle_s - now for s in self._sequences.values() if not s.requests and not s.running]
        return max(min([1.0, *idle]), 0.001)

    def _controls(self, batch: list[_Request]) -> Batch:
        """The control inputs for ``batch``: one row per batch row (``[rows, 1]``; ``[1]`` when the
        model does not batch)."""
        controls: Batch = {}
        for control in self.config.control_input:
            values: list[Any] = []
            for req in batch:
                if control.kind == SEQUENCE_CORRID:
                    value: Any = str(req.args.id).encode() if control.data_type == "BYTES" else req.args.id
                else:
                    flag = {
                        SEQUENCE_START: req.args.start,
                        SEQUENCE_END: req.args.end,
                        SEQUENCE_READY: True,
                    }[control.kind]
                    value = control.false_true[flag]
                values += [value] * req.rows
            array = np.array(values, dtype=V2_TO_NUMPY[control.datatype])
            controls[control.name] = array.reshape(-1, 1) if self.max_batch_size else array.reshape(1)
        return controls

    def _execute(self, instance: int, batch: list[_Request]) -> None:
        t0 = time.perf_counter()
        outputs: Batch = {}
        error: BaseException | None = None
        try:
            if len(batch) == 1:
                inputs = dict(batch[0].inputs)
            else:
                inputs = {name: np.concatenate([r.inputs[name] for r in batch]) for name in batch[0].inputs}
            inputs.update(self._controls(batch))
            outputs = self._run(inputs)
        except BaseException as exc:  # reported to the callers; the instance keeps serving
            plain = isinstance(exc, Exception) and not isinstance(exc, StopIteration)
            error = exc if plain else RuntimeError(f"{type(exc).__name__}: {exc}")
        compute_s = time.perf_counter() - t0
        with self._cond:
            self._running -= 1
            now = time.monotonic()
            for req in batch:
                seq = self._sequences.get(req.args.id)
                if seq is None:
                    continue
                seq.running = False
                seq.last_seen = now
                if seq.ending and not seq.requests:
                    self._release(seq)
            self._cond.notify_all()
        try:
            batch[0].loop.call_soon_threadsafe(self._answer, batch, outputs, error, compute_s)
        except RuntimeError:  # the loop is closed: nobody waits for these requests
            pass

    # ------------------------------------------------------------ answering (event loop)

    def _answer(self, batch: list[_Request], outputs: Batch, error: BaseException | None, compute_s: float) -> None:
        """Record the call and hand each request its rows of the outputs, in order."""
        rows = sum(r.rows for r in batch)
        for o in self.observers:
            for r in batch:
                o.queued(r.queue_s)
        if error is None:
            self.estimate.observe(1, compute_s)
            for o in self.observers:
                o.executed(len(batch), rows, compute_s)
            if len(batch) > 1:
                bad = [k for k, v in outputs.items() if np.ndim(v) == 0 or np.shape(v)[0] != rows]
                if bad:
                    error = InferenceError(
                        f"model {self.name!r} returned outputs {bad} without a batch dimension of {rows}; "
                        "its sequences cannot share a batch (set max_batch_size = 0)"
                    )
        start = 0
        for r in batch:
            if r.future.done():
                pass  # cancelled or timed out while running
            elif error is not None:
                r.future.set_exception(error)
            elif len(batch) == 1:
                r.future.set_result(outputs)
            else:
                r.future.set_result({k: v[start : start + r.rows] for k, v in outputs.items()})
            start += r.rows

    # ------------------------------------------------------------ drain, unload

    def refuse_queued(self, error: Exception) -> None:
        """Answer every queued request with ``error``; running calls go on."""
        with self._cond:
            for seq in self._sequences.values():
                for req in seq.requests:
                    req.state = WITHDRAWN
                    _fail(req.future, error)
                seq.requests.clear()
            self._queued = 0

    async def aclose(self) -> None:
        """Stop taking requests; queued ones are refused."""
        with self._cond:
            self._closed = True
            self.refuse_queued(Unavailable(f"model {self.name!r} is being unloaded"))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()
