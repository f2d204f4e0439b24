"""A failover balancing strategy: first healthy candidate in order."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


class FailoverBalancer:
    """Send everything to the first candidate; skip a node for ``cooldown_s``
    after it fails, so traffic fails over in order and comes back by itself."""

    name = "failover"

    def __init__(self, cooldown_s: float = 10.0, clock: Any = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._down_until: dict[Any, float] = {}

    def pick(self, model: str, candidates: Sequence[Any], request: Any = None) -> Any:
        if not candidates:
            raise LookupError(f"no node serves model {model!r}")
        now = self._clock()
        for node in candidates:
            if self._down_until.get(_key(node), 0.0) <= now:
                return node
        # All cooling down: the one that recovers soonest.
        return min(candidates, key=lambda n: self._down_until.get(_key(n), 0.0))

    def observe(self, node: Any, outcome: str | bool, latency_s: float) -> None:
        ok = outcome is True or outcome == "success"
        if ok:
            self._down_until.pop(_key(node), None)
        else:
            self._down_until[_key(node)] = self._clock() + self.cooldown_s


def _key(node: Any) -> Any:
    return getattr(node, "name", node)
