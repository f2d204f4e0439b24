"""The HTTP port's connections: a deadline for request headers and a cap on how many are open.

aiohttp closes a connection idle between requests after ``keepalive_timeout``
(``limits.idle_timeout_s``), but a client sending its headers a byte at a time
gets as long, and connections are accepted until the process runs out of file
descriptors: a few hundred half-sent requests then lock every client out.
:class:`GuardedSite` listens like ``web.TCPSite`` with both guards added.
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any

import orjson
from aiohttp import web

from ..errors import DlinferError, RequestTimeout, Unavailable

try:
    import resource
except ImportError:  # not on Windows: the open-file limit is left alone there
    resource = None  # type: ignore[assignment]

log = logging.getLogger("dlinfer.server")

#: File descriptors kept for everything but client connections: model files, logs, the
#: gateway's own connections to its nodes.
FD_RESERVE = 256


def raise_open_file_limit() -> int | None:
    """Raise the soft open-file limit to the hard one (a process may do so unprivileged) and
    return the soft limit now in force; None where there is no such limit."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIM_INFINITY
            log.debug("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(max_connections: int) -> int:
    """``limits.max_connections``, lowered so that the HTTP and gRPC ports both at their cap
    still leave :data:`FD_RESERVE` descriptors under the open-file limit."""
    if resource is None:
        return max_connections
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, (soft - FD_RESERVE) // 2))


def raw_response(exc: DlinferError, *headers: str) -> bytes:
    """``exc`` as a whole HTTP/1.1 response that closes the connection, for answers given
    outside any request handler (the body is the usual ``{"error": ...}``)."""
    body = orjson.dumps({"error": exc.message})
    lines = [
        f"HTTP/1.1 {exc.http_status} {http.HTTPStatus(exc.http_status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connections:
    """The open connections of one listener, oldest first, held to ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[GuardedRequestHandler, None] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: GuardedRequestHandler) -> bool:
        """Count ``conn`` in; at the limit, close the oldest connection waiting for a request
        (idle, or its headers still arriving) to make room. False when every one has a request
        in progress: then the new connection must be refused."""
        if len(self._open) >= self.limit:
            oldest = next((c for c in self._open if c.waiting_for_request), None)
            if oldest is None:
                return False
            del self._open[oldest]
            oldest.force_close()
        self._open[conn] = None
        return True

    def discard(self, conn: GuardedRequestHandler) -> None:
        self._open.pop(conn, None)


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, counted in :class:`Connections` and held to a deadline
    for each request's line and headers: ``header_timeout_s`` from when the connection opens,
    or from the first byte of a request after the last response.

    It reads the base class's ``_waiter`` (set while it waits for the next request) and
    ``_messages`` (requests whose headers are complete); aiohttp offers no public hook for either.
    """

    def __init__(
        self, manager: web.Server, *, connections: Connections, header_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._connections = connections
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        #: Bytes of a request arrived since the header timer was armed.
        self._partial = False
        self._refused = False

    @property
    def waiting_for_request(self) -> bool:
        """No request in progress: idle between requests, or the next one's headers still arriving."""
        return self._waiter is not None and not self._waiter.done() and not self._messages

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._connections.admit(self):
            self._refused = True
            limit = self._connections.limit
            exc = Unavailable(f"server has too many open connections (limits.max_connections = {limit}); retry later")
            transport.write(raw_response(exc, "Retry-After: 1"))  # type: ignore[attr-defined]
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return  # never handed to aiohttp
        self._connections.discard(self)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.waiting_for_request:
            self._arm_header_timer()
        if self._header_timer is not None:
            # A request has begun: its header deadline governs now, not the idle timeout
            # (keep_alive() stops aiohttp's idle timer; it restarts after the response).
            self.keep_alive(True)
        self._partial = True
        super().data_received(data)
        if self._messages:  # the headers are complete: limits.body_timeout_s takes over
            self._cancel_header_timer()

    def _arm_header_timer(self) -> None:
        self._partial = False
        self._header_timer = self._loop.call_later(self._header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.waiting_for_request:
            return
        if self._partial and self.transport is not None:
            limit = self._header_timeout_s
            exc = RequestTimeout(f"request headers not received within {limit:g} s (limits.header_timeout_s)")
            self.transport.write(raw_response(exc))
        self.force_close()


class GuardedSite(web.BaseSite):
    """Listen on ``host:port`` like ``web.TCPSite``, with :class:`GuardedRequestHandler` connections.

    ``handler_args`` are the aiohttp ``RequestHandler`` settings (the ones given to the runner);
    ``header_timeout_s`` also bounds the TLS handshake.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        handler_args: dict[str, Any],
        header_timeout_s: float,
        max_connections: int,
        ssl_context: Any = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._handler_args = handler_args
        self._header_timeout_s = header_timeout_s
        self.connections = Connections(max_connections)

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def connection() -> GuardedRequestHandler:
            return GuardedRequestHandler(
                server,
                loop=loop,
                connections=self.connections,
                header_timeout_s=self._header_timeout_s,
                **self._handler_args,
            )

        self._server = await loop.create_server(
            connection,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            ssl_handshake_timeout=self._header_timeout_s if self._ssl_context else None,
        )
