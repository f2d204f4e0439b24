"""gRPC's side of the request body budget (:mod:`.body_budget`).

grpc receives a whole message before any handler sees it, so a message cannot be
refused unread; what the budget bounds here is the messages held while they are
decoded, queued and run, the part that lasts. Each unary request's size is
reserved for as long as its handler runs; over the budget the call ends at once
with ``UNAVAILABLE`` and the message is dropped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..errors import BodyBudgetExhausted
from .body_budget import BodyBudget


class GrpcBodyBudget(grpc.aio.ServerInterceptor):
    """A server interceptor holding each unary request's size in ``budget`` while its handler runs."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # Handlers here mostly parse the raw bytes themselves; others get a message.
            size = len(request) if isinstance(request, bytes) else request.ByteSize()
            try:
                with self.budget.hold(size):
                    return await behavior(request, context)
            except BodyBudgetExhausted as exc:
                await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)

        return handler._replace(unary_unary=guarded)
