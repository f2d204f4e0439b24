"""Built-in plugin: the KServe V2 (Open Inference Protocol) REST endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import orjson
from aiohttp import StreamReader, web

from .. import __version__
from ..builtin.json_codec import load_object
from ..dataplane import check_token
from ..errors import InvalidInput, ModelNotReady, PayloadTooLarge, RequestTimeout, Unsupported
from ..plugins import hookimpl
from ..repository import ModelRepository, ServedModel
from ..shared_memory import CUDA_UNSUPPORTED
from . import log_settings
from .app import CONFIG, PLUGINS, STATE
from .content_encoding import content_encoding, encode_response, read_decoded
from .expect import expect_handler
from .model_config import extension_config


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


#: Server-level endpoints (metadata, health, plugins): shared with frontends that
#: replace the model endpoints, such as the lb gateway.
server_routes = web.RouteTableDef()
routes = web.RouteTableDef()


@server_routes.get("/v2")
async def server_metadata(request: web.Request) -> web.Response:
    extensions = [*request.app[STATE].extensions(), "plugins"]  # /v2/-/plugins is HTTP's own
    return json_response({"name": request.app[CONFIG].server.name, "version": __version__, "extensions": extensions})


@server_routes.get("/v2/health/live")
async def live(request: web.Request) -> web.Response:
    return json_response({"live": True})


@server_routes.get("/v2/health/ready")
async def ready(request: web.Request) -> web.Response:
    is_ready = request.app[STATE].ready
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


def _model_args(request: web.Request) -> tuple[str, str | None]:
    return request.match_info["model"], request.match_info.get("version")


def _model(request: web.Request) -> ServedModel:
    return request.app[STATE].model(*_model_args(request))


# Before /v2/models/{model}, which would take "stats" for a model name.
@routes.get("/v2/models/stats")
@routes.get("/v2/models/{model}/stats")
@routes.get("/v2/models/{model}/versions/{version}/stats")
async def model_statistics(request: web.Request) -> web.Response:
    """The statistics extension: every loaded model version, or one model's."""
    stats = request.app[STATE].statistics(request.match_info.get("model", ""), request.match_info.get("version"))
    return json_response({"model_stats": stats})


@routes.get("/v2/models/{model}")
@routes.get("/v2/models/{model}/versions/{version}")
async def model_metadata(request: web.Request) -> web.Response:
    return json_response(_model(request).metadata())


@routes.get("/v2/models/{model}/ready")
@routes.get("/v2/models/{model}/versions/{version}/ready")
async def model_ready(request: web.Request) -> web.Response:
    try:
        model = request.app[STATE].ready_model(*_model_args(request))
    except ModelNotReady as exc:
        return json_response({"name": request.match_info["model"], "ready": False, "error": exc.message}, 400)
    return json_response({"name": model.name, "ready": True})


@routes.get("/v2/models/{model}/config")
@routes.get("/v2/models/{model}/versions/{version}/config")
async def model_config(request: web.Request) -> web.Response:
    """The extension's configuration (Triton's JSON shape), dlinfer's own under ``dlinfer``, and
    under ``optimized`` what each ``optimize`` step did (a step the gate refused is not served)."""
    model = _model(request)
    native = attrs.asdict(model.config)
    native["max_batch_size"] = model.max_batch_size
    return json_response({**extension_config(model), "dlinfer": native, "optimized": model.optimized})


async def read_body(request: web.Request) -> bytes:
    """The request body, refused early when Content-Length is over the limit and
    cut off when the client takes longer than ``limits.body_timeout_s`` to send it.
    A gzip or deflate body is decompressed, and the limit bounds its decompressed size.

    With a Content-Length the received chunks are joined once (aiohttp's
    ``read()`` copies a large body four times; at 600 KB that was a third of
    the server's own CPU per request).
    """
    limits = request.app[CONFIG].limits
    size = request.content_length
    coding = content_encoding(request.headers)
    if size is not None and size > limits.max_body_bytes:
        raise PayloadTooLarge(f"request body of {size} bytes is larger than the limit of {limits.max_body_bytes} bytes")
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            if coding is not None:  # Content-Length counts the compressed bytes
                return await read_decoded(request.content, coding, limits.max_body_bytes)
            if size is None:  # chunked: aiohttp enforces client_max_size
                return await request.read()
            return await _read_exactly(request.content, size)
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {limits.body_timeout_s:g} s") from None
    except ConnectionResetError:  # the client went away mid-body: nothing to log as a server fault
        raise InvalidInput("the client closed the connection before sending the whole body") from None


async def _read_exactly(content: StreamReader, size: int) -> bytes:
    chunks = []
    got = 0
    while got < size:
        chunk, _ = await content.readchunk()
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got != size:
        raise InvalidInput(f"the request body does not match its Content-Length of {size} bytes")
    return b"".join(chunks)  # one copy; none when the body came in one chunk


def pick_codec(request: web.Request) -> Any:
    codecs = list(request.app[PLUGINS].registry("dlinfer_codecs").values())
    # Plugins registered later (third-party) are asked before the built-in JSON codec.
    for entry in reversed(codecs):
        if entry.obj.accepts(request.content_type if request.body_exists else "", request.headers):
            return entry.obj
    raise InvalidInput(f"unsupported Content-Type {request.content_type!r}")


def _admit_headers(request: web.Request) -> None:
    """Admission from the headers alone, for ``Expect: 100-continue``: refused before the body is sent."""
    request.app[STATE].refuse_early(*_model_args(request))


@routes.post("/v2/models/{model}/infer", expect_handler=expect_handler(_admit_headers))
@routes.post("/v2/models/{model}/versions/{version}/infer", expect_handler=expect_handler(_admit_headers))
async def infer(request: web.Request) -> web.Response:
    # Admitted before the body is read: refused early and cheaply, and counted from here on.
    with request.app[STATE].admit(*_model_args(request)) as lease:
        body = await read_body(request)
        codec = pick_codec(request)
        infer_request = codec.decode(body, request.headers)
        response = await lease.infer(infer_request)
    payload, headers = codec.encode(response, infer_request)
    if request.app[CONFIG].server.compress_responses:
        headers = dict(headers)
        payload = await encode_response(payload, headers, request.headers.get("Accept-Encoding", ""))
    return web.Response(body=payload, headers=headers)


@routes.get("/v2/systemsharedmemory/status")
@routes.get("/v2/systemsharedmemory/region/{name}/status")
async def shared_memory_status(request: web.Request) -> web.Response:
    """The system shared memory extension: every registered region, or one (a list either way)."""
    return json_response(request.app[STATE].shared_memory.status(request.match_info.get("name", "")))


@routes.post("/v2/systemsharedmemory/region/{name}/register")
async def shared_memory_register(request: web.Request) -> web.Response:
    """Register ``{"key", "offset", "byte_size"}`` of a POSIX shared memory object under the name."""
    regions = request.app[STATE].shared_memory
    regions.check_enabled()  # before the body: a node without the extension says so first
    doc = load_object(await read_body(request))
    regions.register(request.match_info["name"], doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
    return json_response({})


@routes.post("/v2/systemsharedmemory/unregister")
@routes.post("/v2/systemsharedmemory/region/{name}/unregister")
async def shared_memory_unregister(request: web.Request) -> web.Response:
    request.app[STATE].shared_memory.unregister(request.match_info.get("name", ""))
    return json_response({})


@routes.get("/v2/cudasharedmemory/status")
@routes.get("/v2/cudasharedmemory/region/{name}/status")
@routes.post("/v2/cudasharedmemory/region/{name}/register")
@routes.post("/v2/cudasharedmemory/unregister")
@routes.post("/v2/cudasharedmemory/region/{name}/unregister")
async def cuda_shared_memory(request: web.Request) -> web.Response:
    """Triton's CUDA shared memory endpoints: a clear refusal rather than a 404."""
    raise Unsupported(CUDA_UNSUPPORTED)


async def index_ready_only(request: web.Request) -> bool:
    """The ``ready`` flag of a repository-index request (an empty body is allowed)."""
    if not request.body_exists:
        return False
    body = await read_body(request)
    if not body.strip():
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    return bool(isinstance(doc, dict) and doc.get("ready"))


@routes.post("/v2/repository/index")
async def repository_index(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].index(await index_ready_only(request)))


@routes.post("/v2/repository/models/{model}/load")
async def repository_load(request: web.Request) -> web.Response:
    """Load a model; ``{"parameters": {"config": "<JSON>", "file:1/model.onnx": "<base64>"}}``
    in the body sends its configuration and files, as Triton's model control does."""
    parameters = await load_parameters(request)
    await request.app[STATE].load(request.match_info["model"], request.headers.get("Authorization"), parameters)
    return json_response({})


async def load_parameters(request: web.Request) -> dict[str, Any]:
    """The ``parameters`` object of a load request's body (none: an empty or absent body)."""
    if not request.body_exists:
        return {}
    body = await read_body(request)
    if not body.strip():
        return {}
    parameters = load_object(body).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput('expected {"parameters": {"config": "...", "file:<path>": "<base64>"}}')
    return parameters


@routes.post("/v2/repository/models/{model}/unload")
async def repository_unload(request: web.Request) -> web.Response:
    await request.app[STATE].unload(request.match_info["model"], request.headers.get("Authorization"))
    return json_response({})


@routes.get("/v2/trace/setting")
@routes.get("/v2/models/{model}/trace/setting")
async def get_trace_settings(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].tracer.settings(_trace_model(request)))


@routes.post("/v2/trace/setting")
@routes.post("/v2/models/{model}/trace/setting")
async def update_trace_settings(request: web.Request) -> web.Response:
    """The trace extension: node-wide or one model's settings (the control token, when set, is required)."""
    check_token(request.app[CONFIG], request.headers.get("Authorization"), "changing trace settings")
    model = _trace_model(request)
    doc = load_object(await read_body(request) or b"{}")
    return json_response(request.app[STATE].tracer.update(doc, model))


def _trace_model(request: web.Request) -> str:
    """The model of a per-model trace setting request ("" for the node's); unknown ones are 404."""
    name = request.match_info.get("model", "")
    if name:
        request.app[STATE].repository.model_dir(name)
    return name


@server_routes.get("/v2/logging")
async def get_log_settings(request: web.Request) -> web.Response:
    return json_response(log_settings.current())


@server_routes.post("/v2/logging")
async def update_log_settings(request: web.Request) -> web.Response:
    """The logging extension: change log verbosity (the control token, when set, is required)."""
    check_token(request.app[CONFIG], request.headers.get("Authorization"), "changing log settings")
    doc = load_object(await read_body(request) or b"{}")
    return json_response(log_settings.update(doc))


@server_routes.get("/v2/-/plugins")
async def list_plugins(request: web.Request) -> web.Response:
    return json_response([p.to_json() for p in request.app[PLUGINS].list()])


@hookimpl
def dlinfer_routes(app: web.Application, repository: ModelRepository) -> None:
    if app[STATE].forwarding:  # a gateway answers V2 itself
        return
    app.add_routes(server_routes)
    app.add_routes(routes)


@hookimpl
def dlinfer_openapi(spec: dict[str, Any], app: web.Application) -> None:
    from .v2_openapi import describe

    describe(spec, app)
