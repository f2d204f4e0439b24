"""TF-Serving's gRPC API on the node's gRPC port.

``tensorflow.serving.PredictionService`` (Predict, Classify, Regress,
GetModelMetadata) and ``tensorflow.serving.ModelService`` (GetModelStatus),
wire-compatible with the ``tensorflow-serving-api`` client stubs. Handlers
take raw bytes and parse them with the package's message classes on first
use, so the node starts without importing TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from dlinfer.api import (
    DlinferError,
    InferenceRequest,
    InferInput,
    InvalidInput,
    ModelNotFound,
    RequestedOutput,
    v2_datatype,
)
from dlinfer.api.frontend import DataPlane, Lease, ServedModel

from . import common

log = logging.getLogger("dlinfer.tf.grpc")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
#: tensorflow.error.Code values used in StatusProto.
_TF_CODES = {"OK": 0, "UNKNOWN": 2}

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


class TFServing:
    """Handlers of both services over the node's data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.repository = plane.repository

    async def _handle(self, handler: Handler, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        from google.protobuf.message import DecodeError

        try:
            await common.import_protos()
            return (await handler(raw, context)).SerializeToString()
        except DlinferError as exc:
            code, message = grpc.StatusCode[exc.grpc_code], exc.message
        except DecodeError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}"
        except Exception as exc:
            log.exception("TF-Serving gRPC request failed")
            message = self.repository.client_text(f"internal error: {type(exc).__name__}: {exc}")
            code = grpc.StatusCode.INTERNAL
        await context.abort(code, message)
        raise AssertionError("unreachable")  # abort raises

    def handler(self, fn: Handler) -> grpc.RpcMethodHandler:
        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._handle(fn, raw, context)

        return grpc.unary_unary_rpc_method_handler(call)

    # ------------------------------------------------------------- helpers

    @staticmethod
    def _model_args(spec: Any) -> tuple[str, int | None]:
        if spec.version_label:
            raise InvalidInput("version labels are not supported; ask for a version number")
        return spec.name, spec.version.value if spec.HasField("version") else None

    def _admit(self, spec: Any) -> Lease:
        """A lease for a Predict/Classify/Regress on ``spec``'s model (draining, unknown, full: refused)."""
        return self.plane.admit(*self._model_args(spec))

    @staticmethod
    def _spec(out: Any, model: ServedModel) -> None:
        out.name = model.name
        out.version.value = model.version
        out.signature_name = common.signature_name_of(model)

    @staticmethod
    def _examples(message: Any) -> list[bytes]:
        kind = message.WhichOneof("kind")
        if kind == "example_list":
            return [e.SerializeToString() for e in message.example_list.examples]
        if kind == "example_list_with_context":
            ctx = message.example_list_with_context.context
            examples = []
            for e in message.example_list_with_context.examples:
                merged = type(ctx)()
                merged.CopyFrom(ctx)
                merged.MergeFrom(e)
                examples.append(merged.SerializeToString())
            return examples
        raise InvalidInput("the request's input has no examples")

    # ------------------------------------------------------------- methods

    async def predict(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest.FromString(raw)
        with self._admit(req.model_spec) as lease:
            model = common.for_signature(self.repository, lease.model, req.model_spec.signature_name)
            inputs = []
            for name, proto in req.inputs.items():
                try:
                    arr = tf.make_ndarray(proto)
                except Exception as exc:  # inconsistent TensorProto (size, dtype)
                    raise InvalidInput(f"input {name!r}: bad TensorProto: {exc}") from None
                inputs.append(InferInput(name, v2_datatype(arr.dtype), arr.shape, arr))
            outputs = [RequestedOutput(n) for n in req.output_filter]
            request = InferenceRequest(inputs, outputs=outputs)
            response = await lease.infer(request, context.time_remaining(), model=model)
        out = predict_pb2.PredictResponse()
        self._spec(out.model_spec, model)
        for o in response.outputs:
            out.outputs[o.name].CopyFrom(tf.make_tensor_proto(o.data))
        return out

    async def classify(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        from tensorflow_serving.apis import classification_pb2

        req = classification_pb2.ClassificationRequest.FromString(raw)
        with self._admit(req.model_spec) as lease:
            model = common.for_signature(self.repository, lease.model, req.model_spec.signature_name)
            results = await common.classify(lease, model, self._examples(req.input), context.time_remaining())
        out = classification_pb2.ClassificationResponse()
        self._spec(out.model_spec, model)
        for row in results:
            classifications = out.result.classifications.add()
            for label, score in row:
                classifications.classes.add(label=label, score=score)
        return out

    async def regress(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        from tensorflow_serving.apis import regression_pb2

        req = regression_pb2.RegressionRequest.FromString(raw)
        with self._admit(req.model_spec) as lease:
            model = common.for_signature(self.repository, lease.model, req.model_spec.signature_name)
            values = await common.regress(lease, model, self._examples(req.input), context.time_remaining())
        out = regression_pb2.RegressionResponse()
        self._spec(out.model_spec, model)
        for v in values:
            out.result.regressions.add(value=v)
        return out

    async def metadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2 as pb

        req = pb.GetModelMetadataRequest.FromString(raw)
        fields = list(req.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidInput(f"metadata_field must be ['signature_def'] (the only metadata served), got {fields}")
        model = self.plane.model(*self._model_args(req.model_spec))
        sig_map = pb.SignatureDefMap()
        for name, definition in common.signature_defs(model).items():
            sig_map.signature_def[name].CopyFrom(definition)
        out = pb.GetModelMetadataResponse()
        self._spec(out.model_spec, model)
        out.model_spec.ClearField("signature_name")
        out.metadata["signature_def"].Pack(sig_map)
        return out

    async def status(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2 as pb
        from tensorflow_serving.apis.status_pb2 import StatusProto

        req = pb.GetModelStatusRequest.FromString(raw)
        spec = req.model_spec
        if spec.version_label:
            raise InvalidInput("version labels are not supported; ask for a version number")
        version = str(spec.version.value) if spec.HasField("version") else None
        if not spec.name:
            raise ModelNotFound("model_spec.name is empty")
        out = pb.GetModelStatusResponse()
        for s in common.version_status(self.repository, spec.name, version):
            out.model_version_status.add(
                version=int(s["version"]),
                state=pb.ModelVersionStatus.State.Value(s["state"]),
                status=StatusProto(
                    error_code=_TF_CODES[s["status"]["error_code"]], error_message=s["status"]["error_message"]
                ),
            )
        return out


def add_services(server: Any, plane: DataPlane) -> None:
    """Register both TF-Serving services on ``server`` (a ``grpc.aio`` server)."""
    svc = TFServing(plane)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                PREDICTION_SERVICE,
                {
                    "Predict": svc.handler(svc.predict),
                    "Classify": svc.handler(svc.classify),
                    "Regress": svc.handler(svc.regress),
                    "GetModelMetadata": svc.handler(svc.metadata),
                },
            ),
            grpc.method_handlers_generic_handler(MODEL_SERVICE, {"GetModelStatus": svc.handler(svc.status)}),
        )
    )
