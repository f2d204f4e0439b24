"""What a Triton Python-backend ``model.py`` imports as ``triton_python_backend_utils``.

The public names and behaviour match Triton's Python backend so that its models run
unchanged: tensors are numpy arrays on the CPU, requests and responses are plain objects,
and a BLS request (``InferenceRequest(...).exec()``) runs another model of the same node
through its data plane, in process. Decoupled models (response senders) are not supported.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

import numpy as np

from dlinfer.api import DlinferError, InferInput, RequestedOutput, v2_datatype
from dlinfer.api import InferenceRequest as _V2Request
from dlinfer.api import InferenceResponse as _V2Response

from . import node

__all__ = [
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "InferenceRequest",
    "InferenceResponse",
    "Logger",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "numpy_to_triton_type",
    "triton_string_to_numpy",
]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

_log = logging.getLogger("dlinfer.python.model")

#: Triton's ``TYPE_*`` names of the model configuration and their numpy dtypes.
_TRITON_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


class TritonModelException(Exception):
    """Raised to the model when a utility or a BLS call cannot do what it was asked."""


class TritonError:
    """An error a model puts in a response (``InferenceResponse(error=...)``), or one a BLS call returns."""

    # The numbers of TRITONSERVER_Error_Code, which Triton's models see.
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = str(message)
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"

    @classmethod
    def from_dlinfer(cls, exc: DlinferError) -> TritonError:
        """The Triton code closest to a dlinfer error's HTTP status."""
        codes = {400: cls.INVALID_ARG, 404: cls.NOT_FOUND, 429: cls.UNAVAILABLE, 503: cls.UNAVAILABLE}
        return cls(str(exc), codes.get(exc.http_status, cls.INTERNAL))


class Tensor:
    """A named tensor held as a numpy array (dlinfer's Python models run on the CPU)."""

    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(name, str):
            raise TritonModelException(f"tensor name must be a string, got {type(name).__name__}")
        array = np.asarray(data)
        if array.dtype.kind in "US":  # strings travel as BYTES: object arrays of bytes
            array = _as_bytes_array(array)
        self._name = name
        self._data = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._data

    def shape(self) -> list[int]:
        return list(self._data.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._data.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, dlpack: Any) -> Tensor:
        """A tensor from any object with ``__dlpack__`` (a torch tensor, a numpy array) on the CPU."""
        try:
            return Tensor(name, np.from_dlpack(dlpack))
        except (TypeError, RuntimeError, BufferError) as exc:
            raise TritonModelException(f"Tensor.from_dlpack({name!r}): {exc}") from exc

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._data.shape)}, dtype={self._data.dtype})"


def _as_bytes_array(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(array.reshape(-1)):
        flat[i] = v.encode() if isinstance(v, str) else bytes(v)
    return out


class InferenceResponse:
    """A model's answer to one request: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters


class InferenceRequest:
    """A request: given to ``execute``, or built by a model to call another model (BLS)."""

    def __init__(
        self,
        model_name: str = "",
        inputs: Sequence[Tensor] | None = None,
        requested_output_names: Sequence[str] | None = None,
        model_version: int = -1,
        correlation_id: int | str = 0,
        request_id: str = "",
        flags: int = 0,
        timeout: int = 0,
        parameters: dict[str, Any] | str | None = None,
        **_ignored: Any,  # preferred_memory, trace: meaningless in one process on the CPU
    ) -> None:
        self._model_name = model_name
        self._inputs = list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._model_version = model_version
        self._correlation_id = correlation_id
        self._request_id = request_id
        self._flags = flags
        self._timeout = timeout
        params = json.loads(parameters) if isinstance(parameters, str) else dict(parameters or {})
        self._parameters = params

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def parameters(self) -> str:
        """The request's parameters as a JSON string, as Triton gives them."""
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self) -> Any:
        raise TritonModelException("decoupled models (response senders) are not supported by dlinfer")

    # ------------------------------------------------------------------ BLS

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Run this request on ``model_name`` of the same node and wait for its response.

        Failures come back as a response whose ``error()`` says why, as in Triton.
        """
        link, version, request = self._bls(decoupled)
        try:
            return _from_v2(link.infer_from_thread(self._model_name, version, request))
        except DlinferError as exc:
            return InferenceResponse(error=TritonError.from_dlinfer(exc))

    def async_exec(self, decoupled: bool = False) -> Awaitable[InferenceResponse]:
        """:meth:`exec` as an awaitable, for ``async def execute``: several calls can run at once."""
        link, version, request = self._bls(decoupled)
        future = link.infer_future(self._model_name, version, request)

        async def answer() -> InferenceResponse:
            try:
                return _from_v2(await future)
            except DlinferError as exc:
                return InferenceResponse(error=TritonError.from_dlinfer(exc))

        return answer()

    def _bls(self, decoupled: bool) -> tuple[node.NodeLink, str | None, _V2Request]:
        if decoupled:
            raise TritonModelException("decoupled BLS calls are not supported by dlinfer")
        if not self._model_name:
            raise TritonModelException("a BLS request needs model_name")
        try:
            link = node.current()
        except DlinferError as exc:
            raise TritonModelException(str(exc)) from None
        inputs = [InferInput(t.name(), _datatype(t), t.as_numpy().shape, t.as_numpy()) for t in self._inputs]
        params = dict(self._parameters)
        if self._timeout:
            params["timeout"] = self._timeout  # microseconds, as the data plane reads it
        if self._correlation_id:  # as in Triton: the request is part of a sequence of a stateful model
            params["sequence_id"] = self._correlation_id
            params["sequence_start"] = bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START)
            params["sequence_end"] = bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
        request = _V2Request(
            inputs,
            id=self._request_id or None,
            outputs=[RequestedOutput(n) for n in self._requested],
            parameters=params,
        )
        version = None if self._model_version in (-1, 0, None) else str(self._model_version)
        return link, version, request


def _datatype(tensor: Tensor) -> str:
    try:
        return v2_datatype(tensor.as_numpy().dtype)
    except DlinferError as exc:
        raise TritonModelException(f"tensor {tensor.name()!r}: {exc}") from None


def _from_v2(response: _V2Response) -> InferenceResponse:
    return InferenceResponse([Tensor(o.name, o.data) for o in response.outputs])


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input called ``name``, or None."""
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output called ``name``, or None."""
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``input`` entry called ``name`` of a model configuration (the dict of ``args['model_config']``)."""
    return next((t for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``output`` entry called ``name`` of a model configuration."""
    return next((t for t in model_config.get("output", []) if t.get("name") == name), None)


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """The numpy type of a configuration's ``data_type`` (``"TYPE_FP32"`` → ``numpy.float32``)."""
    try:
        return _TRITON_TO_NUMPY[triton_type_string]
    except KeyError:
        raise TritonModelException(f"unknown Triton data type {triton_type_string!r}") from None


def numpy_to_triton_type(dtype: Any) -> str:
    """The configuration ``data_type`` of a numpy dtype (``numpy.float32`` → ``"TYPE_FP32"``)."""
    np_type = np.dtype(dtype).type
    if np.dtype(dtype).kind in "OSU":
        return "TYPE_STRING"
    for name, t in _TRITON_TO_NUMPY.items():
        if t is np_type:
            return name
    raise TritonModelException(f"numpy dtype {np.dtype(dtype)} has no Triton data type")


class Logger:
    """``pb_utils.Logger.log_info(...)`` and friends: the node's log, logger ``dlinfer.python.model``."""

    @staticmethod
    def log_info(message: str) -> None:
        _log.info("%s", message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning("%s", message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error("%s", message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug("%s", message)

    @staticmethod
    def log(message: str, level: int = logging.INFO) -> None:
        _log.log(level, "%s", message)
