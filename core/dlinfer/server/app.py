"""The aiohttp application factory and the node's process lifecycle."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import signal
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from ..config import NodeConfig
from ..dataplane import DataPlane
from ..errors import (
    BodyBudgetExhausted,
    DlinferError,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
)
from ..plugins import Plugins
from ..repository import ModelRepository
from .access_log import LOGGER as ACCESS_LOGGER
from .access_log import AccessLog
from .body_budget import BODY_BUDGET, BodyBudget, body_budget_middleware
from .connections import GuardedSite, connection_cap, raise_open_file_limit
from .grpc_server import start_grpc, stop_grpc
from .memory import tune_malloc
from .middlewares import plugin_middlewares
from .protocol_log import ProtocolLog
from .tls import TlsFiles, tls_files

log = logging.getLogger("dlinfer.server")


#: The node's readiness and requests (:class:`DataPlane`); the name frontends and hooks knew it by.
NodeState = DataPlane

CONFIG = web.AppKey("config", NodeConfig)
PLUGINS = web.AppKey("plugins", Plugins)
REPOSITORY = web.AppKey("repository", ModelRepository)
#: The node's :class:`DataPlane`: readiness, admission, inference, control, for every frontend.
STATE = web.AppKey("state", DataPlane)
#: ``[server.tls]`` read once at start (None: plain HTTP and gRPC), for every listener.
TLS: web.AppKey[TlsFiles | None] = web.AppKey("tls")


def error_response(exc: DlinferError) -> web.Response:
    """The one place a :class:`DlinferError` becomes an HTTP response."""
    retry = getattr(exc, "retry_after_s", None)
    return web.Response(
        status=exc.http_status,
        body=orjson.dumps({"error": exc.message}),
        content_type="application/json",
        headers={"Retry-After": str(math.ceil(retry))} if retry is not None else None,
    )


def _body_left_unread(request: web.Request, exc: DlinferError) -> bool:
    """Whether the request failed on its body (undecodable, too large, too slow, no room for it) with part
    of it unread."""
    content = request.content
    if content.at_eof():
        return False
    return content.exception() is not None or isinstance(exc, PayloadTooLarge | RequestTimeout | BodyBudgetExhausted)


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` with ``Connection: close``, then close the connection.

    The rest of the body is still on the connection, so it cannot carry
    another request: a client or gateway that pooled it would fail its next
    request there. Reading the rest to keep it (aiohttp lingers up to 10 s)
    would spend on a refused body what the refusal saved, and a body that
    failed to decompress cannot be read at all.
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # after the answer is written: the transport flushes it, then closes
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except DlinferError as exc:
        if _body_left_unread(request, exc):
            return await answer_and_close(request, error_response(exc))
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].limits.max_body_bytes
        error = error_response(PayloadTooLarge(f"request body is larger than the limit of {limit} bytes"))
        return await answer_and_close(request, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.Response(
            status=exc.status,
            body=orjson.dumps({"error": exc.reason if exc.status != 404 else f"no endpoint {request.path}"}),
            content_type="application/json",
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = request.app[REPOSITORY].client_text(f"internal error: {type(exc).__name__}: {exc}")
        return error_response(DlinferError(message))


async def _await_all(results: list[Any]) -> None:
    for r in results:
        if inspect.isawaitable(r):
            await r


def create_app(config: NodeConfig, plugins: Plugins | None = None) -> web.Application:
    """Build the node's application: plugins, repository, routes and lifecycle."""
    if plugins is None:
        plugins = Plugins(config).load()
    plugins.check_registries()
    # The body budget inside error_middleware, which turns its refusal into a 503. Plugins' middlewares
    # between: their errors get the core's JSON format, and a request they refuse holds no budget.
    middlewares = [error_middleware, *plugin_middlewares(plugins, config), body_budget_middleware]
    app = web.Application(client_max_size=config.limits.max_body_bytes, middlewares=middlewares)
    app[BODY_BUDGET] = budget = BodyBudget(config.limits.max_inflight_body_bytes, config.limits.max_body_bytes)
    app[TLS] = tls = tls_files(config)
    repository = ModelRepository(config, plugins)
    app[CONFIG] = config
    app[PLUGINS] = plugins
    app[REPOSITORY] = repository
    app[STATE] = DataPlane(repository)
    plugins.hook.dlinfer_routes(app=app, repository=repository)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await _await_all(plugins.hook.dlinfer_startup(app=app))
        await repository.start()
        grpc_server = await start_grpc(config, plugins, repository, tls, budget, state=app[STATE])
        app[STATE].started = True
        yield
        app[STATE].draining = True
        await stop_grpc(grpc_server, config.server.drain_timeout_s)
        await repository.close()
        app[STATE].shared_memory.close()
        app[STATE].tracer.close()
        await _await_all(plugins.hook.dlinfer_shutdown(app=app))

    app.cleanup_ctx.append(lifecycle)
    return app


async def start_http(app: web.Application) -> web.AppRunner:
    """Listen on ``server.http_port`` (TLS when configured) with the node's HTTP settings and
    connection guards (header deadline, idle timeout, connection cap)."""
    config = app[CONFIG]
    limits = config.limits
    tls = app[TLS]
    handler_args: dict[str, Any] = {
        "access_log": ACCESS_LOGGER if config.server.access_log else None,
        "access_log_class": AccessLog,
        "logger": ProtocolLog(),
        "read_bufsize": _READ_BUFSIZE,
        "max_line_size": limits.max_header_bytes,
        "max_field_size": limits.max_header_bytes,
        "keepalive_timeout": limits.idle_timeout_s,
    }
    # handler_cancellation: a client that disconnects cancels its handler, which drops its queued work.
    runner = web.AppRunner(
        app, handle_signals=False, handler_cancellation=True, shutdown_timeout=_RESPONSE_GRACE_S, **handler_args
    )
    await runner.setup()
    cap = connection_cap(limits.max_connections)
    if cap < limits.max_connections:
        log.warning(
            "limits.max_connections = %d is more than the open-file limit allows; at most %d per port",
            limits.max_connections,
            cap,
        )
    # A deep accept backlog: bursts of new connections get a 429 from the scheduler, not a reset.
    site = GuardedSite(
        runner,
        config.server.host,
        config.server.http_port,
        handler_args=handler_args,
        header_timeout_s=limits.header_timeout_s,
        max_connections=cap,
        backlog=2048,
        ssl_context=tls.context if tls else None,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve(config: NodeConfig, plugins: Plugins | None = None) -> None:
    """Run the node until SIGINT/SIGTERM, then drain and return."""
    if config.server.keep_freed_memory:
        tune_malloc()
    raise_open_file_limit()
    app = create_app(config, plugins)
    runner = await start_http(app)
    scheme = "https" if app[TLS] else "http"
    log.info("dlinfer serving HTTP on %s://%s:%d", scheme, config.server.host, config.server.http_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("draining: readiness is false, finishing in-flight requests")
        app[STATE].draining = True
        left = await drain(app[REPOSITORY], config.server.drain_timeout_s)
        if left:
            log.warning(
                "drain timeout %.1f s passed with %d requests in flight; the queued ones were refused",
                config.server.drain_timeout_s,
                left,
            )
        try:
            await asyncio.wait_for(runner.cleanup(), timeout=config.server.drain_timeout_s + 2 * _RESPONSE_GRACE_S)
        except TimeoutError:
            # A framework call cannot be interrupted; its request is already cut off.
            log.warning("shutdown: model calls still running past the drain timeout; exiting when they return")


#: Body bytes a connection may buffer before reading pauses. aiohttp's 64 KiB paused and resumed
#: the socket ten times per 600 KB tensor; bodies are read whole anyway (up to limits.max_body_bytes).
_READ_BUFSIZE = 4 << 20

#: Time the HTTP server gives handlers to write their responses once the models are idle.
_RESPONSE_GRACE_S = 1.0


async def drain(repository: ModelRepository, timeout_s: float) -> int:
    """Wait until no model has a request in flight, at most ``timeout_s``; return how many are left.

    While draining, readiness is false and new inference requests are refused
    with 503, so the count only goes down. Requests still queued at the timeout
    would never run: they are answered 503 / ``UNAVAILABLE`` here, while the
    ports are still open; running ones are left to the shutdown.
    """
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    while (left := sum(m.inflight for m in repository.loaded())) and loop.time() < until:
        await asyncio.sleep(0.02)
    if left:
        for model in repository.loaded():
            model.scheduler.refuse_queued(Unavailable("server is shutting down"))
    return left
