"""The built-in balancing strategies, registered through ``dlinfer_balancers``.

A strategy class has a ``name`` and is instantiated once per model, as
``cls(policy=...)`` with the model's :class:`~dlinfer_lb.settings.RoutePolicy`
when its constructor takes ``policy``, else as ``cls()``. The gateway calls
``pick(model, candidates, request)`` with the admitted nodes that have the
model ready (never empty) and ``observe(node, outcome, latency_s)`` after
each attempt, ``outcome`` being ``"success"`` or ``"failure"``. Nodes expose
``url``, ``weight``, ``outstanding`` (requests in flight on that node) and
``admitted_since()``: what a strategy learnt about a node before that moment
is about a node that went away (failed its checks, or was ejected), not about
the one that came back, and is dropped. Everything runs on the event loop: no
locks.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from .settings import RoutePolicy

SUCCESS, FAILURE = "success", "failure"


class Strategy:
    """Base class: keeps the policy; ``observe`` does nothing unless overridden."""

    name = ""
    #: The time source of the built-ins' statistics (tests set a controlled one).
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, policy: RoutePolicy) -> None:
        self.policy = policy

    def pick(self, model: str, candidates: Sequence[Any], request: Any) -> Any:
        raise NotImplementedError

    def observe(self, node: Any, outcome: str, latency_s: float) -> None:
        return None


class SmoothWeightedRoundRobin(Strategy):
    """nginx's smooth weighted round robin.

    Every node starts with its effective weight equal to its configured weight
    (left at zero, every pick goes to the first node). Each pick adds the
    effective weights to the current weights, takes the largest and subtracts
    the total from it, which interleaves nodes (5:1:1 gives a a b a c a a).
    A failure lowers a node's effective weight by a quarter of its weight and
    each success raises it back by as much, up to the configured weight; a
    node admitted again starts from its configured weight.
    """

    name = "swrr"

    def __init__(self, policy: RoutePolicy) -> None:
        super().__init__(policy)
        self._current: dict[str, float] = {}
        self._effective: dict[str, tuple[float, float]] = {}  # url -> (effective weight, when set)

    def _eff(self, node: Any) -> float:
        held = self._effective.get(node.url)
        if held is None or held[1] < node.admitted_since():
            self._current[node.url] = 0.0
            return self._set(node, float(node.weight))
        return held[0]

    def _set(self, node: Any, eff: float) -> float:
        self._effective[node.url] = (eff, self.clock())
        return eff

    def pick(self, model: str, candidates: Sequence[Any], request: Any) -> Any:
        total = 0.0
        best = None
        best_current = -math.inf
        for node in candidates:
            eff = self._eff(node)
            current = self._current.get(node.url, 0.0) + eff
            self._current[node.url] = current
            total += eff
            if current > best_current:
                best, best_current = node, current
        assert best is not None
        self._current[best.url] -= total
        return best

    def observe(self, node: Any, outcome: str, latency_s: float) -> None:
        eff = self._eff(node)
        step = max(1.0, node.weight / 4)
        if outcome == SUCCESS:
            if eff < node.weight:
                self._set(node, min(float(node.weight), eff + step))
        else:
            # Keep a floor of one so the node still gets a trickle to prove it recovered.
            self._set(node, max(1.0, eff - step))


class LeastOutstanding(Strategy):
    """The node with the fewest requests in flight; ties broken at random."""

    name = "least_outstanding"

    def pick(self, model: str, candidates: Sequence[Any], request: Any) -> Any:
        low = min(n.outstanding for n in candidates)
        return random.choice([n for n in candidates if n.outstanding == low])


class PeakEwma(Strategy):
    """Power of two choices over peak-EWMA latency x (outstanding + 1).

    Two nodes are drawn at random and the cheaper one wins. The latency
    estimate jumps up to any slower answer at once (peak) and blends towards
    faster ones with time constant ``ewma_decay_s``, so a node that turns slow
    loses traffic quickly and wins it back gradually. While a node gets no
    answers its estimate fades, with the same time constant, towards the
    median estimate of the other candidates: an answer from three time
    constants ago weighs 5%, so a once-slow node is tried again. A node with
    no answer since it was last admitted (new, or back after failed checks or
    an ejection) counts at that median, like a typical node: neither starved
    nor flooded.

    Failures are no latency samples: a refused connection says nothing about
    how fast a node answers, and its absence is the health checks' and the
    outlier ejection's business (counted as a deadline-long answer, a failure
    would keep a restarted node idle for a minute). A node that hangs is
    avoided anyway, by its outstanding requests.
    """

    name = "p2c"

    def __init__(self, policy: RoutePolicy) -> None:
        super().__init__(policy)
        self._ewma: dict[str, tuple[float, float]] = {}  # url -> (estimate_s, when)

    def _held(self, node: Any) -> tuple[float, float] | None:
        held = self._ewma.get(node.url)
        return held if held is not None and held[1] >= node.admitted_since() else None

    def _known(self, candidates: Sequence[Any]) -> dict[str, tuple[float, float]]:
        """The candidates' (estimate, when) learnt since their last admission, by url."""
        return {n.url: held for n in candidates if (held := self._held(n)) is not None}

    def estimate(self, node: Any, candidates: Sequence[Any], now: float) -> float:
        """The node's latency estimate at ``now``, among ``candidates``."""
        return self._estimate(node, self._known(candidates), now)

    def _estimate(self, node: Any, known: dict[str, tuple[float, float]], now: float) -> float:
        others = [est for url, (est, _) in known.items() if url != node.url]
        typical = statistics.median(others) if others else 0.0
        held = known.get(node.url)
        if held is None:
            return typical
        est, when = held
        return typical + (est - typical) * math.exp(-(now - when) / self.policy.ewma_decay_s)

    def pick(self, model: str, candidates: Sequence[Any], request: Any) -> Any:
        if len(candidates) == 1:
            return candidates[0]
        a, b = random.sample(list(candidates), 2)
        now, known = self.clock(), self._known(candidates)
        cost_a = self._estimate(a, known, now) * (a.outstanding + 1)
        return a if cost_a <= self._estimate(b, known, now) * (b.outstanding + 1) else b

    def observe(self, node: Any, outcome: str, latency_s: float) -> None:
        if outcome != SUCCESS:
            return
        now = self.clock()
        held = self._held(node)
        if held is None or latency_s > held[0]:
            est = latency_s
        else:
            w = math.exp(-(now - held[1]) / self.policy.ewma_decay_s)
            est = held[0] * w + latency_s * (1 - w)
        self._ewma[node.url] = (est, now)


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class ConsistentHash(Strategy):
    """Consistent hashing on a request header, with bounded loads.

    Each node owns 160 points on a hash ring; a request goes to the first node
    clockwise from its key's hash whose outstanding requests are below
    ``ceil(hash_balance * (total + 1) / n)`` (Mirrokni, Thorup and Zadimoghaddam),
    so a hot key spills to the next node instead of overloading one.
    Requests without the header fall back to least outstanding.
    """

    name = "consistent_hash"
    points_per_node = 160

    def __init__(self, policy: RoutePolicy) -> None:
        super().__init__(policy)
        self._rings: dict[frozenset[str], tuple[list[int], list[str]]] = {}

    def _ring(self, urls: frozenset[str]) -> tuple[list[int], list[str]]:
        ring = self._rings.get(urls)
        if ring is None:
            points = sorted((_hash(f"{url}#{i}"), url) for url in urls for i in range(self.points_per_node))
            ring = ([h for h, _ in points], [u for _, u in points])
            if len(self._rings) > 64:  # membership churn: keep the cache small
                self._rings.clear()
            self._rings[urls] = ring
        return ring

    def key(self, request: Any) -> str | None:
        return request.headers.get(self.policy.hash_header) if request is not None else None

    def pick(self, model: str, candidates: Sequence[Any], request: Any) -> Any:
        key = self.key(request)
        if key is None:
            low = min(n.outstanding for n in candidates)
            return random.choice([n for n in candidates if n.outstanding == low])
        by_url = {n.url: n for n in candidates}
        hashes, owners = self._ring(frozenset(by_url))
        total = sum(n.outstanding for n in candidates)
        capacity = math.ceil(self.policy.hash_balance * (total + 1) / len(candidates))
        start = bisect.bisect(hashes, _hash(key)) % len(hashes)
        seen: set[str] = set()
        for i in range(len(hashes)):
            url = owners[(start + i) % len(hashes)]
            if url in seen:
                continue
            seen.add(url)
            if by_url[url].outstanding < capacity:
                return by_url[url]
            if len(seen) == len(by_url):
                break
        return by_url[owners[start]]


BUILTIN_STRATEGIES: tuple[type[Strategy], ...] = (SmoothWeightedRoundRobin, LeastOutstanding, PeakEwma, ConsistentHash)
