"""``Expect: 100-continue``: refuse a request before its body is sent.

A client with a large body may send the headers alone with
``Expect: 100-continue`` and wait for the server's go-ahead (curl does for
bodies over 1 MiB). aiohttp answers ``100 Continue`` before any middleware or
handler runs, so an overloaded node would still receive, read and discard every
body it then refuses. :func:`expect_handler` first asks what can be decided
from the headers alone (the body's size, the model's admission), and refuses
with the final answer instead: the body never crosses the network, and the
connection is closed because the client may already be sending it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, web

from ..errors import DlinferError, PayloadTooLarge
from .app import CONFIG, answer_and_close, error_response

#: What a route can decide from the headers: raise a DlinferError to refuse.
HeaderCheck = Callable[[web.Request], None]


def expect_handler(check: HeaderCheck) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """An aiohttp ``expect_handler`` running ``check`` (and the body size limit) before ``100 Continue``."""

    async def handle(request: web.Request) -> web.StreamResponse | None:
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get('Expect')}")
        try:
            limit = request.app[CONFIG].limits.max_body_bytes
            if request.content_length is not None and request.content_length > limit:
                raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
            check(request)
        except DlinferError as exc:
            return await answer_and_close(request, error_response(exc))
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response's size
        return None

    return handle
