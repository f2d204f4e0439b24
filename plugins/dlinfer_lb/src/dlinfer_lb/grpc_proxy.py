"""Gateway mode over gRPC: ``inference.GRPCInferenceService`` answered by forwarding.

``ModelMetadata``, ``ModelConfig`` and ``ModelInfer`` are forwarded to a node's gRPC port as raw
bytes: only the model name and version (fields 1 and 2 of all three requests) are
read off the wire, tensors are never parsed. Health, server metadata, model
readiness and the repository index are answered from what the gateway knows;
model load/unload fan out to the nodes like over HTTP. Retries, deadlines,
strategies and outlier ejection are the HTTP path's: UNAVAILABLE and
RESOURCE_EXHAUSTED are retried on another node, any other status reaches the
client with the node's own details.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from multidict import CIMultiDict

from dlinfer.api import DeadlineExceeded, DlinferError, InvalidInput, Unavailable, hookimpl
from dlinfer.api.frontend import SERVER_VERSION as __version__
from dlinfer.api.frontend import V2_GRPC_EXTENSIONS as EXTENSIONS
from dlinfer.api.frontend import V2_GRPC_SERVICE as SERVICE
from dlinfer.api.frontend import answer_stream, check_name, version_arg
from dlinfer.api.frontend import v2_pb as pb

from .proxy import UpstreamError
from .sequences import SequenceRef, sequence_ref
from .strategies import FAILURE, SUCCESS

if TYPE_CHECKING:
    from .gateway import Gateway
    from .membership import Node

log = logging.getLogger("dlinfer.lb")

#: Statuses that mean "this node cannot take it now; another one may".
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise InvalidInput("malformed request message: bad varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _walk(buf: bytes) -> Iterator[tuple[int, bytes | int]]:
    """The top-level fields of a protobuf message in wire order: length-delimited ones as bytes,
    varints as ints; fixed-width fields are skipped."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise InvalidInput("malformed request message: truncated field")
            yield field, buf[pos : pos + n]
            pos += n
        elif wire == 0:
            value, pos = _varint(buf, pos)
            yield field, value
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise InvalidInput(f"malformed request message: wire type {wire}")


def _fields(buf: bytes) -> dict[int, bytes | int]:
    """The top-level fields of a protobuf message (the last occurrence wins, as in protobuf)."""
    return dict(_walk(buf))


def _text(value: bytes | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        raise InvalidInput("malformed request message: model name is not a string")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidInput("malformed request message: model name is not UTF-8") from None


def model_and_version(buf: bytes) -> tuple[str, str]:
    """V2 requests: the model name and version are fields 1 and 2 (strings)."""
    found = _fields(buf)
    return _text(found.get(1)), _text(found.get(2))


def tf_model_spec(buf: bytes) -> tuple[str, str]:
    """TF-Serving requests: ``model_spec`` (field 1) holds the name (1) and an ``Int64Value`` version (2)."""
    spec = _fields(_bytes(_fields(buf).get(1)))
    version = _fields(_bytes(spec.get(2))).get(1, 0) if 2 in spec else None
    if isinstance(version, bytes):
        raise InvalidInput("malformed request message: model_spec.version is not an integer")
    return _text(spec.get(1)), "" if version is None else str(version)


def _infer_parameters(buf: bytes) -> dict[str, Any]:
    """The sequence entries of a ``ModelInferRequest``'s ``parameters`` map (field 4: entries with a
    string key, 1, and an ``InferParameter`` value, 2), read off the wire without touching tensors."""
    params: dict[str, Any] = {}
    for field, value in _walk(buf):
        if field == 4 and isinstance(value, bytes):
            entry = _fields(value)
            name = entry.get(1)
            if isinstance(name, bytes) and name.startswith(b"sequence_"):
                params[name.decode(errors="replace")] = _parameter_value(_bytes(entry.get(2)))
    return params


def _parameter_value(buf: bytes) -> Any:
    """An ``InferParameter``: bool (1), int64 (2), string (3) or uint64 (5); a double (4) is ignored."""
    found = _fields(buf)
    if isinstance(found.get(1), int):
        return bool(found[1])
    if isinstance(found.get(2), int):
        value = int(found[2])
        return value - (1 << 64) if value >= 1 << 63 else value
    if isinstance(found.get(3), bytes):
        return _text(found[3])
    return found.get(5) if isinstance(found.get(5), int) else None


def grpc_sequence(buf: bytes) -> SequenceRef | None:
    """The sequence a raw ``ModelInferRequest`` belongs to, if any."""
    if b"sequence_id" not in buf:
        return None
    return sequence_ref(_infer_parameters(buf))


def _bytes(value: bytes | int | None) -> bytes:
    if isinstance(value, int):
        raise InvalidInput("malformed request message: expected a message field")
    return value or b""


#: Methods answered by a node that has the model, per service: (method, how to read the model off
#: the request, whether it is an inference the gateway refuses while it drains).
FORWARDED: dict[str, list[tuple[str, Callable[[bytes], tuple[str, str]], bool]]] = {
    SERVICE: [
        ("ModelMetadata", model_and_version, False),
        ("ModelConfig", model_and_version, False),
        ("ModelInfer", model_and_version, True),
    ],
    "tensorflow.serving.PredictionService": [
        ("Predict", tf_model_spec, True),
        ("Classify", tf_model_spec, True),
        ("Regress", tf_model_spec, True),
        ("GetModelMetadata", tf_model_spec, False),
    ],
    "tensorflow.serving.ModelService": [("GetModelStatus", tf_model_spec, False)],
}


class _Headers:
    """gRPC metadata seen as request headers, for strategies that key on a header."""

    def __init__(self, metadata: Any) -> None:
        self.headers = CIMultiDict((k, v) for k, v in metadata or () if isinstance(v, str))


def _forwarded_metadata(metadata: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in metadata or () if not k.startswith((":", "grpc-")) and k != "user-agent"]


class GrpcGateway:
    """A plugin object bound to one gateway, registered at run time in gateway mode."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        #: The node's readiness (``dlinfer.server.app.NodeState``), given with the hook call.
        self.state: Any = None

    @hookimpl
    def dlinfer_grpc_services(self, server: Any, repository: Any, state: Any) -> None:
        self.state = state
        local: dict[str, tuple[type, Callable[[Any, Any], Awaitable[Any]]]] = {
            "ServerLive": (pb.ServerLiveRequest, self.server_live),
            "ServerReady": (pb.ServerReadyRequest, self.server_ready),
            "ModelReady": (pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self.server_metadata),
            "RepositoryIndex": (pb.RepositoryIndexRequest, self.repository_index),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, self.model_load),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, self.model_unload),
            "ModelStatistics": (pb.ModelStatisticsRequest, self.model_statistics),
        }
        handlers: dict[str, grpc.RpcMethodHandler] = {
            name: grpc.unary_unary_rpc_method_handler(_parsed(message, fn), response_serializer=_serialize)
            for name, (message, fn) in local.items()
        }
        services = {SERVICE: handlers}
        for service, methods in FORWARDED.items():
            forwarded = services.setdefault(service, {})
            for method, spec, inference in methods:
                forwarded[method] = grpc.unary_unary_rpc_method_handler(
                    self._forwarder(f"/{service}/{method}", spec, inference)
                )
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self.stream_infer)
        server.add_generic_rpc_handlers(
            tuple(grpc.method_handlers_generic_handler(service, h) for service, h in services.items())
        )

    # ------------------------------------------------------------ answered here

    async def server_live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.state.ready)  # the gateway's own check is one of the state's

    async def model_ready(self, request: Any, context: Any) -> Any:
        model, version = _model_args(request.name, request.version)
        ready = not self.state.draining and bool(self.gw.membership.candidates(model, version, time.monotonic()))
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name=self.gw.config.server.name, version=__version__, extensions=EXTENSIONS)

    async def repository_index(self, request: Any, context: Any) -> Any:
        msg = pb.RepositoryIndexResponse()
        for row in self.gw.index(ready_only=request.ready):
            msg.models.add(name=row["name"], version=row.get("version", ""), state=row["state"], reason=row["reason"])
        return msg

    async def model_statistics(self, request: Any, context: Any) -> Any:
        model, version = _model_args(request.name, request.version) if request.name else ("", None)
        msg = pb.ModelStatisticsResponse()
        for doc in (await self.gw.statistics(model, version))["model_stats"]:
            json_format.ParseDict(doc, msg.model_stats.add())
        return msg

    async def model_load(self, request: Any, context: Any) -> Any:
        # Load parameters (config, file:<path>) reach the nodes as the HTTP body they take.
        parameters = {}
        for key, value in request.parameters.items():
            which = value.WhichOneof("parameter_choice")
            content = getattr(value, which) if which else None
            parameters[key] = base64.b64encode(content).decode() if isinstance(content, bytes) else content
        body = orjson.dumps({"parameters": parameters}) if parameters else b""
        await self._control(context, "load", request.model_name, body)
        return pb.RepositoryModelLoadResponse()

    async def model_unload(self, request: Any, context: Any) -> Any:
        await self._control(context, "unload", request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def _control(self, context: Any, action: str, model: str, body: bytes = b"") -> None:
        headers = {k: v for k, v in context.invocation_metadata() or () if k == "authorization"}
        if body:
            headers["Content-Type"] = "application/json"
        status, error = await self.gw.control_nodes(action, check_name(model), headers, body)
        if status != 200:
            await context.abort(HTTP_TO_GRPC.get(status, grpc.StatusCode.INTERNAL), error)

    # ------------------------------------------------------------- forwarded

    def _forwarder(
        self, path: str, spec: Callable[[bytes], tuple[str, str]], inference: bool
    ) -> Callable[[bytes, Any], Awaitable[bytes]]:
        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                if inference and self.state.draining:
                    raise Unavailable("server is shutting down")
                model, version = _model_args(*spec(raw))
                return await self._forward(path, model, version, raw, context)
            except DlinferError as exc:
                await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
                raise  # abort raises; this line is never reached
            except Answered as answered:
                await context.abort(answered.code, answered.details)
                raise

        return forward

    async def stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """``ModelStreamInfer`` through the gateway: each request on the stream is forwarded to a
        node as a ``ModelInfer`` (strategies, retries and ejection as for a unary call) and its
        answer, or its error, goes back on the stream as it arrives."""
        path = f"/{SERVICE}/ModelInfer"

        async def answer(raw: bytes) -> bytes:
            try:
                if self.state.draining:
                    raise Unavailable("server is shutting down")
                model, version = _model_args(*model_and_version(raw))
                response = await self._forward(path, model, version, raw, context)
                # ModelStreamInferResponse.infer_response (field 2) holds the node's answer as it came.
                return _length_delimited(2, response)
            except DlinferError as exc:
                message = exc.message
            except Answered as answered:
                message = answered.details
            failed = pb.ModelStreamInferResponse(error_message=message)
            try:  # the request's id (field 3) and model, so the client knows which request failed
                name, version_text = model_and_version(raw)
                failed.infer_response.id = _text(_fields(raw).get(3))
                failed.infer_response.model_name, failed.infer_response.model_version = name, version_text
            except InvalidInput:
                pass
            return _serialize(failed)

        async for reply in answer_stream(requests, answer):
            yield reply

    async def _forward(
        self, path: str, model: str, version: str | None, raw: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        gw = self.gw
        route = gw.route(model)
        policy = route.policy
        loop = asyncio.get_running_loop()
        client_left = context.time_remaining()
        deadline = loop.time() + (policy.deadline_s if client_left is None else min(policy.deadline_s, client_left))
        metadata = _forwarded_metadata(context.invocation_metadata())
        keyed = _Headers(context.invocation_metadata())
        tried: set[str] = set()
        errors: list[str] = []
        refused: grpc.aio.AioRpcError | None = None
        gw.proxy.budget.request()
        seq = grpc_sequence(raw) if path.endswith("/ModelInfer") else None
        for attempt in range(policy.max_retries + 1):
            now = time.monotonic()
            candidates = [n for n in gw.membership.candidates(model, version, now) if n.grpc and n.url not in tried]
            if not candidates:
                if not tried:
                    raise gw.proxy.no_candidate(model, version)
                break
            if attempt:
                if not gw.proxy.budget.try_retry():
                    gw.metrics.budget_exhausted.labels(model).inc()
                    errors.append("retry budget exhausted")
                    break
                gw.metrics.retries.labels(model).inc()
            if seq is not None:
                node = gw.proxy.sequences.pick(model, seq, candidates)
            else:
                node = route.strategy.pick(model, candidates, keyed)
            tried.add(node.url)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(f"model {model!r}: deadline passed; " + "; ".join(errors))
            try:
                answer = await self._attempt(node, route, model, path, raw, metadata, remaining)
                if seq is not None:
                    gw.proxy.sequences.answered(model, seq, node, True)
                return answer
            except grpc.aio.AioRpcError as exc:
                if seq is not None:
                    gw.proxy.sequences.answered(model, seq, node, False)
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise Answered(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"model {model!r}: no answer within {remaining * 1000:.0f} ms (waiting for {node.grpc})",
                    ) from None
                if exc.code() not in RETRY_CODES:
                    # The node answered: its status and details are the client's answer.
                    raise Answered(exc.code(), exc.details() or "") from None
                errors.append(f"{node.grpc}: {exc.code().name}: {exc.details()}")
                refused = exc
                if seq is not None:
                    break  # a sequence's state is on its node: never move it
        if refused is not None:
            # The last node's own refusal (its status and details) is the most useful error.
            raise Answered(refused.code(), refused.details() or "")
        raise UpstreamError(f"model {model!r}: no node could answer: " + "; ".join(errors))

    async def _attempt(
        self, node: Node, route: Any, model: str, path: str, raw: bytes, metadata: Any, remaining: float
    ) -> bytes:
        gw = self.gw
        channel = gw.grpc_channel(node)
        call = channel.unary_unary(path)  # no (de)serializers: bytes in, bytes out
        node.outstanding += 1
        node.requests += 1
        gw.metrics.upstream.labels(model, node.url).inc()
        t0 = time.perf_counter()
        try:
            answer = await call(raw, timeout=remaining, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            latency = time.perf_counter() - t0
            code = exc.code()
            if code in RETRY_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
                reason = f"{code.name}: {exc.details()}"
                node.failures += 1
                node.last_error = reason
                gw.metrics.failures.labels(model, node.url, code.name.lower()).inc()
                route.strategy.observe(node, FAILURE, latency)
                if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    gw.outlier.failure(node, reason)
            else:
                route.strategy.observe(node, SUCCESS, latency)
                gw.outlier.success(node)
            raise
        finally:
            node.outstanding -= 1
        latency = time.perf_counter() - t0
        gw.metrics.latency.labels(model, node.url).observe(latency)
        route.strategy.observe(node, SUCCESS, latency)
        gw.outlier.success(node)
        return answer


def _model_args(name: str, version: str) -> tuple[str, str | None]:
    v = version_arg(version or None)
    return check_name(name), str(int(v)) if v else None


class Answered(Exception):
    """A node's (or the deadline's) final gRPC status for a forwarded request: the client's answer."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _length_delimited(field: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (a nested message as bytes)."""
    key, size = (field << 3) | 2, len(data)
    out = bytearray([key])
    while size > 0x7F:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out) + data


def _serialize(msg: Any) -> bytes:
    return msg.SerializeToString()


def _parsed(message: type[Message], fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[bytes, Any], Awaitable[Any]]:
    """Parse the request as ``message``; a :class:`DlinferError` becomes its gRPC status."""

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            try:
                request = message.FromString(raw)
            except DecodeError as exc:
                raise InvalidInput(f"malformed {message.__name__} message: {exc}") from None
            return await fn(request, context)
        except DlinferError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)

    return handler
