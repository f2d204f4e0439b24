"""The link from a Python model to its node, for BLS calls (``InferenceRequest.exec``).

A model's ``execute`` runs in the model's worker thread; another model of the node is
called through the node's data plane on the event loop, so the call gets that model's
own admission, queue, deadline and metrics, exactly as a client request would.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import attrs

from dlinfer.api import InferenceRequest, InferenceResponse, Unavailable
from dlinfer.api.frontend import DataPlane


@attrs.frozen
class NodeLink:
    """A node's data plane and the event loop it runs on."""

    plane: DataPlane
    loop: asyncio.AbstractEventLoop

    async def infer(self, model: str, version: str | None, request: InferenceRequest) -> InferenceResponse:
        """Run ``request`` on ``model`` as a client request would (admission, then the model's scheduler)."""
        with self.plane.admit(model, version) as lease:
            return await lease.infer(request)

    def infer_from_thread(self, model: str, version: str | None, request: InferenceRequest) -> InferenceResponse:
        """:meth:`infer` from a worker thread, waiting for the answer."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:  # waiting here would block the loop the call needs
            raise RuntimeError("a BLS exec() cannot wait on the node's event loop; use async_exec()")
        return asyncio.run_coroutine_threadsafe(self.infer(model, version, request), self.loop).result()

    def infer_future(self, model: str, version: str | None, request: InferenceRequest) -> Any:
        """:meth:`infer` as an awaitable of the caller's own event loop (``async def execute``)."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.infer(model, version, request), self.loop))


#: Each running node's link, by the identity of its NodeConfig: set when the node's
#: application starts, before its models load; removed when it stops. A process may
#: run several nodes (tests do), so one module-level link would not do.
_LINKS: dict[int, NodeLink] = {}

#: The link of the model whose ``initialize``/``execute``/``finalize`` runs in this context.
CURRENT: contextvars.ContextVar[NodeLink | None] = contextvars.ContextVar("dlinfer_python_node", default=None)


def attach(config: object, link: NodeLink) -> None:
    _LINKS[id(config)] = link


def detach(config: object) -> None:
    _LINKS.pop(id(config), None)


def link_for(config: object) -> NodeLink | None:
    return _LINKS.get(id(config))


def current() -> NodeLink:
    """The node of the model now running, for a BLS call."""
    link = CURRENT.get()
    if link is None:
        raise Unavailable(
            "BLS calls need a running node: call exec() from initialize() or execute() of a model it serves"
        )
    return link
