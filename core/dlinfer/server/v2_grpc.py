"""Built-in plugin: the KServe V2 (Open Inference Protocol) gRPC service.

``inference.GRPCInferenceService`` on the node's ``grpc.aio`` server: health,
metadata, inference (typed ``contents`` or ``raw_input_contents``; outputs
always in ``raw_output_contents``) and repository control. Requests go through
the same :class:`InferenceRequest` / ``ServedModel.infer`` path as HTTP, and
errors map to gRPC codes through each error class's ``grpc_code``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from .. import __version__
from ..builtin.binary_codec import tensor_from_bytes, tensor_to_bytes
from ..config import NodeConfig
from ..dataplane import check_token
from ..datatypes import check_shape, numpy_dtype
from ..errors import DlinferError, InvalidInput, ModelNotFound, ModelNotReady, Unsupported
from ..inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput
from ..plugins import hookimpl
from ..repository import ModelRepository, ServedModel
from ..shared_memory import CUDA_UNSUPPORTED, names_region, placeholder
from . import log_settings
from .model_config import extension_config
from .proto import inference_pb2 as pb
from .streams import answer_stream

if TYPE_CHECKING:
    from ..dataplane import DataPlane

log = logging.getLogger("dlinfer.grpc")

SERVICE = "inference.GRPCInferenceService"
METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "ModelInfer",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "LogSettings",
    "TraceSetting",
)

#: Triton's CUDA shared memory methods, answered UNIMPLEMENTED (no GPU memory regions here).
CUDA_SHARED_MEMORY_METHODS = ("CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister")

#: The ``InferTensorContents`` field each datatype travels in (FP16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# ------------------------------------------------------------------ codec


def parameters_from_proto(params: Any) -> dict[str, Any]:
    """``map<string, InferParameter>`` as a plain dict."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def parameters_to_proto(params: dict[str, Any], target: Any) -> None:
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                p.uint64_param = value
            else:
                p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = str(value)


def tensor_from_contents(name: str, datatype: str, shape: list[int], contents: Any) -> np.ndarray:
    """A numpy array from typed ``InferTensorContents``, range-checked like JSON."""
    dtype = numpy_dtype(datatype)
    count = check_shape(name, shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input {name!r}: datatype {datatype} must be sent in raw_input_contents")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, but {field} has {len(values)}")
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    if dtype.kind in "bf":
        return np.array(values, dtype=dtype).reshape(shape)
    # int_contents/uint_contents are wider than INT8/16 and UINT8/16: refuse, never wrap.
    wide = np.array(values, dtype=np.uint64 if dtype.kind == "u" else np.int64)
    info = np.iinfo(dtype)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        raise InvalidInput(f"input {name!r}: value out of range for {datatype} ({info.min}..{info.max})")
    return wide.astype(dtype).reshape(shape)


def decode_infer_request(msg: Any, config: NodeConfig) -> InferenceRequest:
    """A ``ModelInferRequest`` as an :class:`InferenceRequest`."""
    if not msg.inputs:
        raise InvalidInput("request has no inputs")
    raw = msg.raw_input_contents
    every_raw = len(raw) == len(msg.inputs)
    if raw and not every_raw:
        # Inputs in shared memory have no entry (tritonclient sends none for them).
        carried = sum(1 for t in msg.inputs if not names_region(t.parameters))
        if len(raw) != carried:
            raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {carried} inputs; need one each")
    limit = config.limits.max_tensor_elements
    inputs = []
    shared = False
    entry = 0
    for t in msg.inputs:
        shape = list(t.shape)
        check_shape(t.name, shape, limit)
        params = parameters_from_proto(t.parameters)
        if names_region(params):  # read from its region by the data plane
            data = placeholder(t.name, params, t.HasField("contents") or (bool(raw) and every_raw))
            shared = True
        elif raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input {t.name!r}: give its data in contents or raw_input_contents, not both")
            data = tensor_from_bytes(t.name, t.datatype, shape, raw[entry])
            entry += 1
        else:
            data = tensor_from_contents(t.name, t.datatype, shape, t.contents)
        inputs.append(InferInput(t.name, t.datatype, tuple(shape), data, params))
    outputs = [RequestedOutput(o.name, parameters_from_proto(o.parameters)) for o in msg.outputs]
    shared = shared or any(names_region(o.parameters) for o in outputs)
    return InferenceRequest(inputs, msg.id or None, outputs, parameters_from_proto(msg.parameters), shared)


def encode_infer_response(resp: InferenceResponse) -> Any:
    """An :class:`InferenceResponse` as a ``ModelInferResponse`` with raw output bytes."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id or "")
    parameters_to_proto(resp.parameters, msg.parameters)
    for o in resp.outputs:
        t = msg.outputs.add(name=o.name, datatype=o.datatype, shape=list(o.shape))
        parameters_to_proto(o.parameters, t.parameters)
        if names_region(o.parameters):  # written to shared memory: an empty entry keeps the others in step
            msg.raw_output_contents.append(b"")
        else:
            msg.raw_output_contents.append(bytes(tensor_to_bytes(o.data, o.datatype)))
    return msg


# --------------------------------------------------------------- servicer

Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def model_config_message(model: ServedModel) -> Any:
    """The model configuration extension's message for a served model."""
    return json_format.ParseDict(extension_config(model), pb.ModelConfig())


def _rpc(message: type[Message]) -> Callable[[Handler], Handler]:
    """Parse the request bytes as ``message`` and turn a :class:`DlinferError`
    (or a bug) into the gRPC status it maps to.

    Parsing here rather than in grpc's deserializer makes a malformed message an
    INVALID_ARGUMENT with a reason instead of grpc's generic INTERNAL.
    """

    def decorate(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def wrapper(self: Any, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                try:
                    request = message.FromString(raw)
                except DecodeError as exc:
                    raise InvalidInput(f"malformed {message.__name__} message: {exc}") from None
                return await fn(self, request, context)
            except DlinferError as exc:
                err = exc
            except Exception as exc:
                log.exception("unhandled error in %s", fn.__name__)
                err = DlinferError(self.repository.client_text(f"internal error: {type(exc).__name__}: {exc}"))
            await context.abort(grpc.StatusCode[err.grpc_code], err.message)

        return wrapper

    return decorate


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


class V2Servicer:
    """The V2 gRPC methods over the node's data plane."""

    def __init__(self, repository: ModelRepository, state: DataPlane) -> None:
        self.repository = repository
        self.state = state
        self.config = repository.config

    @_rpc(pb.ServerLiveRequest)
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    @_rpc(pb.ServerReadyRequest)
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.state.ready)

    @_rpc(pb.ModelReadyRequest)
    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self.state.ready_model(request.name, request.version)
        except (ModelNotReady, ModelNotFound):  # Triton's answer for an unknown model: not ready
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc(pb.ServerMetadataRequest)
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        extensions = self.state.extensions()
        return pb.ServerMetadataResponse(name=self.config.server.name, version=__version__, extensions=extensions)

    @_rpc(pb.ModelMetadataRequest)
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        doc = self.state.model(request.name, request.version).metadata()
        msg = pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"])
        for kind in ("inputs", "outputs"):
            for t in doc[kind]:
                getattr(msg, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return msg

    @_rpc(pb.ModelConfigRequest)
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        model = self.state.model(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config_message(model))

    @_rpc(pb.ModelStatisticsRequest)
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        msg = pb.ModelStatisticsResponse()
        for doc in self.state.statistics(request.name, request.version):
            json_format.ParseDict(doc, msg.model_stats.add())
        return msg

    @_rpc(pb.ModelInferRequest)
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._infer(request, context.time_remaining())

    async def _infer(self, request: Any, deadline_s: float | None) -> Any:
        # Draining, unknown model, full queue: refused before decoding.
        with self.state.admit(request.model_name, request.model_version) as lease:
            infer_request = decode_infer_request(request, self.config)
            response = await lease.infer(infer_request, deadline_s=deadline_s)
        return encode_infer_response(response)

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        """The streaming extension: any number of requests and answers on one stream.

        Each request starts as it arrives (in arrival order, so a sequence's
        requests reach the scheduler in order) and is answered as it finishes,
        with its ``id``; a request that fails answers ``error_message`` (with the
        request's ``id`` and model in ``infer_response``) and the stream goes on.
        What is left of the stream's deadline bounds each request when it starts.
        """
        async for answer in answer_stream(requests, lambda raw: self._stream_answer(raw, context)):
            yield answer

    async def _stream_answer(self, raw: bytes, context: Any) -> Any:
        """One request of a stream answered: its response, or its error as ``error_message``."""
        request = None
        try:
            try:
                request = pb.ModelInferRequest.FromString(raw)
            except DecodeError as exc:
                raise InvalidInput(f"malformed ModelInferRequest message: {exc}") from None
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, context.time_remaining()))
        except DlinferError as exc:
            message = exc.message
        except Exception as exc:
            log.exception("unhandled error in ModelStreamInfer")
            message = self.repository.client_text(f"internal error: {type(exc).__name__}: {exc}")
        answer = pb.ModelStreamInferResponse(error_message=message)
        if request is not None:  # so a client with many requests in flight knows which one failed
            answer.infer_response.id = request.id
            answer.infer_response.model_name = request.model_name
            answer.infer_response.model_version = request.model_version
        return answer

    @_rpc(pb.TraceSettingRequest)
    async def TraceSetting(self, request: Any, context: Any) -> Any:
        """The trace extension, node-wide or for ``model_name`` (the control token guards changes)."""
        model = request.model_name
        if model:
            self.repository.model_dir(model)  # an unknown model is NOT_FOUND
        tracer = self.state.tracer
        if request.settings:
            check_token(self.config, _metadata(context, "authorization"), "changing trace settings")
            changes = {k: list(v.value) or None for k, v in request.settings.items()}
            settings = tracer.update(
                {k: v if k == "trace_level" or v is None else v[0] for k, v in changes.items()}, model
            )
        else:
            settings = tracer.settings(model)
        msg = pb.TraceSettingResponse()
        for key, value in settings.items():
            msg.settings[key].value.extend(value if isinstance(value, list) else [value])
        return msg

    @_rpc(pb.LogSettingsRequest)
    async def LogSettings(self, request: Any, context: Any) -> Any:
        """The logging extension (the control token, when set, is required to change settings)."""
        settings = log_settings.current()
        if request.settings:
            check_token(self.config, _metadata(context, "authorization"), "changing log settings")
            changes = {}
            for key, value in request.settings.items():
                which = value.WhichOneof("parameter_choice")
                changes[key] = getattr(value, which) if which else None
            settings = log_settings.update(changes)
        msg = pb.LogSettingsResponse()
        for key, value in settings.items():
            field = (
                "bool_param"
                if isinstance(value, bool)
                else "uint32_param"
                if isinstance(value, int)
                else "string_param"
            )
            setattr(msg.settings[key], field, value)
        return msg

    @_rpc(pb.SystemSharedMemoryStatusRequest)
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        msg = pb.SystemSharedMemoryStatusResponse()
        for region in self.state.shared_memory.status(request.name):
            msg.regions[region["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**region))
        return msg

    @_rpc(pb.SystemSharedMemoryRegisterRequest)
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        self.state.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc(pb.SystemSharedMemoryUnregisterRequest)
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        self.state.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemory(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        """Every CUDA shared memory method: a clear UNIMPLEMENTED rather than grpc's "method not found"."""
        await context.abort(grpc.StatusCode[Unsupported.grpc_code], CUDA_UNSUPPORTED)

    @_rpc(pb.RepositoryIndexRequest)
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        msg = pb.RepositoryIndexResponse()
        for row in self.state.index(ready_only=request.ready):
            msg.models.add(name=row["name"], version=row.get("version", ""), state=row["state"], reason=row["reason"])
        return msg

    @_rpc(pb.RepositoryModelLoadRequest)
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        # config (string) and file:<path> (bytes) parameters send the model's configuration and files.
        parameters = parameters_from_proto(request.parameters)
        await self.state.load(request.model_name, _metadata(context, "authorization"), parameters, base64_files=False)
        return pb.RepositoryModelLoadResponse()

    @_rpc(pb.RepositoryModelUnloadRequest)
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self.state.unload(request.model_name, _metadata(context, "authorization"))
        return pb.RepositoryModelUnloadResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers, under the protocol's service name."""
        handlers: dict[str, grpc.RpcMethodHandler] = {
            name: grpc.unary_unary_rpc_method_handler(
                getattr(self, name), response_serializer=lambda msg: msg.SerializeToString()
            )
            for name in METHODS
        }
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.ModelStreamInfer, response_serializer=lambda msg: msg.SerializeToString()
        )
        for name in CUDA_SHARED_MEMORY_METHODS:
            handlers[name] = grpc.unary_unary_rpc_method_handler(self.CudaSharedMemory)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


@hookimpl
def dlinfer_grpc_services(server: Any, repository: ModelRepository, state: DataPlane) -> None:
    if state.forwarding:  # a gateway answers V2 itself
        return
    server.add_generic_rpc_handlers((V2Servicer(repository, state).handler(),))
