"""Forwarding one client request to a node, with retries on other nodes.

The body is passed through as bytes, never parsed, with the client's headers
(less the hop-by-hop ones); the node's answer comes back the same way,
streamed when it is large. A compressed request body (``Content-Encoding``)
is the exception: the gateway has already decompressed it, as aiohttp does
for every request it reads, and bounded it by ``limits.max_body_bytes``, so
it goes to the node plain and without that header. Sending it on compressed
would mean reading the client's bytes raw, and the gateway must hold the
whole body anyway to retry it on another node. A connection error or a 503/429 from a node is
retried on a node not tried yet, while the per-model deadline, the retry
count and the gateway-wide retry budget allow. Every other answer of a node
(400, 404, 500, ...) goes back to the client unchanged, with the node's own
error message; when no node answers, the error names each node and why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from dlinfer.api import DeadlineExceeded, DlinferError, ModelNotFound, ModelNotReady

from .health import OutlierDetector
from .membership import Membership, Node
from .metrics import GatewayMetrics
from .sequences import SequenceRouter, http_sequence
from .settings import RoutePolicy
from .strategies import FAILURE, SUCCESS, Strategy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"content-encoding"}
#: Answers that mean "this node cannot take it now; another one may".
RETRY_STATUS = frozenset({429, 503})
#: Answers that count against a node for outlier ejection.
GATEWAY_FAILURE = frozenset({502, 503, 504})
#: Bodies above this many bytes are streamed to the client instead of buffered.
STREAM_OVER = 1 << 20


class UpstreamError(DlinferError):
    """No node could answer: every attempt failed to connect or was refused."""

    http_status = 502
    grpc_code = "UNAVAILABLE"


class RetryBudget:
    """Retries allowed over a sliding window: ``ratio`` of the requests plus
    ``min_per_s`` per second (Finagle's retry budget), so retries cannot
    multiply the load when every node is failing."""

    def __init__(self, ratio: float, min_per_s: float, window_s: int = 10) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._stamp = [-1] * window_s
        self._requests = [0] * window_s
        self._retries = [0] * window_s

    def _slot(self) -> int:
        second = int(time.monotonic())
        i = second % self.window_s
        if self._stamp[i] != second:
            self._stamp[i], self._requests[i], self._retries[i] = second, 0, 0
        return i

    def _live(self, counts: list[int]) -> int:
        oldest = int(time.monotonic()) - self.window_s
        return sum(c for c, s in zip(counts, self._stamp, strict=True) if s > oldest)

    def request(self) -> None:
        self._requests[self._slot()] += 1

    def try_retry(self) -> bool:
        i = self._slot()
        allowed = self.min_per_s * self.window_s + self.ratio * self._live(self._requests)
        if self._live(self._retries) >= allowed:
            return False
        self._retries[i] += 1
        return True


class Route:
    """A model's policy and its strategy instance."""

    def __init__(self, policy: RoutePolicy, strategy: Strategy) -> None:
        self.policy = policy
        self.strategy = strategy


def forward_headers(headers: Any) -> CIMultiDict[str]:
    """The client's headers for the node: not the hop-by-hop ones, nor the body's
    Content-Encoding (the body is forwarded decompressed)."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _NOT_FORWARDED)


def _response_headers(headers: Any) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP | {"date", "server"})


class _Refused:
    """An attempt to retry elsewhere, with what the node said."""

    def __init__(self, reason: str, status: int | None = None, body: bytes = b"", headers: Any = None) -> None:
        self.reason = reason
        self.status = status
        self.body = body
        self.headers = headers


class Proxy:
    """Sends requests to nodes chosen by a model's strategy and relays the answers."""

    def __init__(
        self,
        membership: Membership,
        outlier: OutlierDetector,
        metrics: GatewayMetrics,
        budget: RetryBudget,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.membership = membership
        self.outlier = outlier
        self.metrics = metrics
        self.budget = budget
        self._now = now
        #: The node of each live sequence of a stateful model (HTTP and gRPC alike).
        self.sequences = SequenceRouter()

    def no_candidate(self, model: str, version: str | None) -> DlinferError:
        what = f"model {model!r}" + (f" version {version}" if version else "")
        if not self.membership.knows(model, version):
            return ModelNotFound(f"{what} is not in the repository of any node")
        return ModelNotReady(f"{what} is not ready on any node that takes traffic")

    async def forward(
        self, request: web.Request, route: Route, model: str, version: str | None, body: bytes | None
    ) -> web.StreamResponse:
        policy = route.policy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.deadline_s
        headers = forward_headers(request.headers)
        path = request.rel_url.raw_path_qs
        tried: set[str] = set()
        errors: list[str] = []
        refused: _Refused | None = None
        self.budget.request()
        retries = 0
        seq = http_sequence(request.headers, body)
        while True:
            candidates = [n for n in self.membership.candidates(model, version, self._now()) if n.url not in tried]
            if not candidates:
                if not tried:
                    raise self.no_candidate(model, version)
                break
            if seq is not None:
                node = self.sequences.pick(model, seq, candidates)
            else:
                node = route.strategy.pick(model, candidates, request)
            tried.add(node.url)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"model {model!r}: deadline of {policy.deadline_s * 1000:.0f} ms passed; " + "; ".join(errors)
                )
            result = await self._attempt(request, route, model, node, path, body, headers, remaining)
            if not isinstance(result, _Refused):
                if seq is not None:
                    self.sequences.answered(model, seq, node, result.status == 200)
                return result
            errors.append(f"{node.url}: {result.reason}")
            if result.status is not None:
                refused = result
            if seq is not None or retries >= policy.max_retries:
                break  # a sequence's state is on its node: never move it
            if not self.budget.try_retry():
                self.metrics.budget_exhausted.labels(model).inc()
                errors.append("retry budget exhausted")
                break
            retries += 1
            self.metrics.retries.labels(model).inc()
        if refused is not None:
            # The node's own answer (its status and reason) is the most useful error.
            return web.Response(
                status=refused.status or 502, body=refused.body, headers=_response_headers(refused.headers)
            )
        raise UpstreamError(f"model {model!r}: no node could answer: " + "; ".join(errors))

    async def _attempt(
        self,
        request: web.Request,
        route: Route,
        model: str,
        node: Node,
        path: str,
        body: bytes | None,
        headers: CIMultiDict[str],
        remaining: float,
    ) -> web.StreamResponse | _Refused:
        assert node.session is not None
        node.outstanding += 1
        node.requests += 1
        self.metrics.upstream.labels(model, node.url).inc()
        t0 = time.perf_counter()
        try:
            async with node.session.request(
                request.method, path, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=remaining)
            ) as resp:
                latency = time.perf_counter() - t0
                self.metrics.latency.labels(model, node.url).observe(latency)
                if resp.status in RETRY_STATUS:
                    content = await resp.read()
                    reason = f"answered {resp.status}: {_error_text(content)}"
                    self._failed(
                        route, model, node, reason, latency, str(resp.status), eject=resp.status in GATEWAY_FAILURE
                    )
                    return _Refused(reason, resp.status, content, resp.headers)
                if resp.status in GATEWAY_FAILURE:
                    self._failed(route, model, node, f"answered {resp.status}", latency, str(resp.status), eject=True)
                else:
                    route.strategy.observe(node, SUCCESS, latency)
                    self.outlier.success(node)
                return await _relay(request, resp)
        except TimeoutError:
            latency = time.perf_counter() - t0
            self._failed(route, model, node, "no answer before the deadline", latency, "timeout", eject=True)
            raise DeadlineExceeded(
                f"model {model!r}: no answer within the deadline of {route.policy.deadline_s * 1000:.0f} ms "
                f"(waiting for {node.url})"
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            latency = time.perf_counter() - t0
            reason = _connection_reason(exc)
            self._failed(route, model, node, reason, latency, "connection", eject=True)
            return _Refused(reason)
        finally:
            node.outstanding -= 1

    def _failed(
        self, route: Route, model: str, node: Node, reason: str, latency: float, kind: str, *, eject: bool
    ) -> None:
        node.failures += 1
        node.last_error = reason
        self.metrics.failures.labels(model, node.url, kind).inc()
        route.strategy.observe(node, FAILURE, latency)
        if eject:
            self.outlier.failure(node, reason)


async def _relay(request: web.Request, resp: aiohttp.ClientResponse) -> web.StreamResponse:
    headers = _response_headers(resp.headers)
    if resp.content_length is not None and resp.content_length <= STREAM_OVER:
        return web.Response(status=resp.status, body=await resp.read(), headers=headers)
    out = web.StreamResponse(status=resp.status, headers=headers)
    if resp.content_length is not None:
        out.content_length = resp.content_length
    await out.prepare(request)
    try:
        async for chunk in resp.content.iter_chunked(1 << 16):
            await out.write(chunk)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        # The client has part of the answer already: too late to retry, so cut its connection too.
        raise ConnectionResetError(f"node closed the connection mid-answer: {exc}") from exc
    await out.write_eof()
    return out


def _error_text(body: bytes) -> str:
    import orjson

    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)


def _connection_reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the node before it answered"
    return f"{type(exc).__name__}: {exc}"
