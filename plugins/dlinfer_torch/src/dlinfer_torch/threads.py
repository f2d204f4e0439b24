"""Intra-op threads per model, although ``torch.set_num_threads`` looks process-wide.

torch's official builds run intra-op work on OpenMP, whose team size is a per-thread
setting (the ``nthreads-var`` ICV of the calling thread): ``torch.set_num_threads``
called on a thread sizes the teams that thread starts, and only seeds threads that have
not run torch yet. Each model runs on its own worker threads (its instance pool), so a
model gets exactly its own ``threads`` by setting it on each of its worker threads before
their first call. It is set once per thread, not per request, because the call also
clears oneDNN's primitive cache.

With another parallel backend (TBB, native) the setting is truly global; there the pool
is sized to the largest ``threads`` of the models loaded (it only grows), so a model's
speed does not depend on the order models were loaded in.
"""

from __future__ import annotations

import functools
import logging
import threading

log = logging.getLogger("dlinfer.torch")

_lock = threading.Lock()
_global_size: list[int] = []  # what this plugin sized a process-wide pool to, once it did


@functools.cache
def per_thread() -> bool:
    """Whether torch's intra-op team size is a per-thread setting (the OpenMP backend)."""
    import torch

    info = torch.__config__.parallel_info()
    return any(line.startswith("ATen parallel backend: OpenMP") for line in info.splitlines())


def use(n: int) -> None:
    """On the calling (worker) thread: run torch's intra-op work on ``n`` threads."""
    import torch

    if per_thread() and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def configure(n: int, inter_op: int, model: str) -> None:
    """At load: size a process-wide pool (non-OpenMP builds) and torch's inter-op pool."""
    import torch

    with _lock:
        if not per_thread():
            current = _global_size[0] if _global_size else 0
            if n > current:
                torch.set_num_threads(n)
                _global_size[:] = [n]
            elif n < current:
                log.info("model %s asks for %d threads; torch's process-wide pool keeps %d", model, n, current)
        if inter_op and torch.get_num_interop_threads() != inter_op:
            try:
                torch.set_num_interop_threads(inter_op)
            except RuntimeError:
                pass  # torch already started its inter-op pool; it cannot be resized
