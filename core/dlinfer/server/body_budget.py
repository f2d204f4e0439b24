"""One memory budget for all the request bodies the node holds at once.

``limits.max_body_bytes`` bounds one body, but a hundred clients each sending a
body just under it would still take gigabytes. Every HTTP request with a body
(V2, TF-Serving REST, the gateway's proxy: all go through the app's middleware)
reserves its size before the body is read and gives it back when its handler is
done; gRPC messages reserve theirs once received, for as long as they are
processed (:mod:`.grpc_budget`). A request that would take the total past
``limits.max_inflight_body_bytes`` gets 503 (gRPC ``UNAVAILABLE``) with a
Retry-After, its body unread. While nothing is held, one request is let in
whatever its size, so a body up to ``max_body_bytes`` always gets through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

from ..errors import BodyBudgetExhausted


class BodyBudget:
    """Bytes of request bodies held now, against ``limit``."""

    def __init__(self, limit: int, max_body_bytes: int) -> None:
        self.limit = limit
        self.max_body_bytes = max_body_bytes
        self.held = 0

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[None]:
        """Reserve ``size`` bytes for the block, or raise :class:`BodyBudgetExhausted` at once."""
        if self.held and self.held + size > self.limit:
            raise BodyBudgetExhausted(
                f"the server is holding {self.held} bytes of request bodies and {size} more would pass "
                f"limits.max_inflight_body_bytes ({self.limit}); retry shortly"
            )
        self.held += size
        try:
            yield
        finally:
            self.held -= size

    def body_size(self, request: web.Request) -> int:
        """What ``request``'s body will take: its Content-Length, or ``max_body_bytes`` when it is
        chunked or compressed (its size is known only once read, and bounded by that)."""
        if not request.body_exists:
            return 0
        size = request.content_length
        if size is None or request.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity"):
            return self.max_body_bytes
        return min(size, self.max_body_bytes)  # a larger one is refused with 413, unread


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)


@web.middleware
async def body_budget_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    budget = request.app[BODY_BUDGET]
    with budget.hold(budget.body_size(request)):
        return await handler(request)
