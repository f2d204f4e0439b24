"""Built-in plugin: the V2 JSON tensor codec.

JSON is parsed with orjson straight into Python lists and turned into numpy
in one ``np.asarray`` per tensor; outputs are written by orjson's native numpy
serializer, so no per-element Python code runs on either side.

JSON has no number for NaN or the infinities. As Triton (RapidJSON with its
NaN/Inf flags) and TF-Serving do, they are written as the tokens ``NaN``,
``Infinity`` and ``-Infinity``, which Python's ``json`` (so tritonclient and
requests) reads, and read back the same way; orjson alone would write null,
a silently wrong answer.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson

from ..datatypes import check_shape, numpy_dtype, v2_datatype
from ..errors import InvalidInput
from ..inference import (
    InferenceRequest,
    InferenceResponse,
    InferInput,
    InferOutput,
    RequestedOutput,
)
from ..plugins import hookimpl
from ..shared_memory import names_region, placeholder

_INT_KINDS = "iu"
_ORJSON_NATIVE = {"b", "i", "u", "f"}
_NON_FINITE_TOKEN = re.compile(rb"NaN|Infinity")


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise InvalidInput(f"{where}: missing '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidInput(f"{where}: '{key}' must be {_kind_word(kind)}, got {type(value).__name__}")
    return value


def _kind_word(kind: type | tuple[type, ...]) -> str:
    words = {str: "a string", list: "an array", dict: "an object", int: "an integer"}
    if isinstance(kind, tuple):
        return " or ".join(words.get(k, k.__name__) for k in kind)
    return words.get(kind, kind.__name__)


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    return params


def tensor_from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """A numpy array from a V2 JSON ``data`` field, strictly checked.

    Floats are refused for integer tensors and out-of-range integers are
    refused rather than wrapped, so a client mistake is an error, not a
    silently different input.
    """
    where = f"input {name!r}"
    dtype = numpy_dtype(datatype)
    expected = check_shape(name, shape)
    if datatype == "BYTES":
        arr = _bytes_tensor(data, where)
    else:
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{where}: 'data' is not a regular array: {exc}") from None
        if datatype == "UINT64" and arr.dtype.kind == "f" and arr.size and arr.max() >= 2**63:
            # Integers beyond INT64 make numpy fall back to float64; parse them exactly.
            if not np.all(np.floor(arr) == arr):
                raise InvalidInput(f"{where}: datatype UINT64 needs integers, got floating-point numbers")
            try:
                arr = np.asarray(data, dtype=np.uint64)
            except (OverflowError, ValueError):
                raise InvalidInput(f"{where}: value out of range for UINT64") from None
        arr = _cast(arr, dtype, datatype, where)
    if arr.size != expected:
        raise InvalidInput(f"{where}: shape {shape} needs {expected} elements, but 'data' has {arr.size}")
    return arr.reshape(shape)


def _cast(arr: np.ndarray, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    kind = arr.dtype.kind
    if arr.size == 0:
        return arr.astype(dtype)
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidInput(f"{where}: datatype BOOL needs true/false values, got {arr.dtype.name} data")
        return arr
    if dtype.kind in _INT_KINDS:
        if kind not in _INT_KINDS and kind != "b":
            raise InvalidInput(f"{where}: datatype {datatype} needs integers, got {_data_word(arr)}")
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidInput(f"{where}: value out of range for {datatype} ({info.min}..{info.max})")
        return arr.astype(dtype, copy=False)
    # floating point
    if kind not in "iuf":
        raise InvalidInput(f"{where}: datatype {datatype} needs numbers, got {_data_word(arr)}")
    return arr.astype(dtype, copy=False)


def _data_word(arr: np.ndarray) -> str:
    return {"f": "floating-point numbers", "U": "strings", "b": "booleans", "O": "mixed values"}.get(
        arr.dtype.kind, f"{arr.dtype.name} values"
    )


def _bytes_tensor(data: Any, where: str) -> np.ndarray:
    flat = data
    if isinstance(data, list) and data and isinstance(data[0], list):
        try:
            flat = np.asarray(data, dtype=object).ravel().tolist()
        except ValueError as exc:
            raise InvalidInput(f"{where}: 'data' is not a regular array: {exc}") from None
    if not isinstance(flat, list) or not all(isinstance(s, str) for s in flat):
        raise InvalidInput(f"{where}: datatype BYTES needs an array of strings")
    out = np.empty(len(flat), dtype=object)
    out[:] = [s.encode() for s in flat]
    return out


#: Takes an input's name, datatype, shape and parameters and returns its array
#: when the tensor travels outside the JSON document (the binary extension), else None.
TensorSource = Callable[[str, str, list[int], dict[str, Any]], "np.ndarray | None"]


def loads(body: bytes) -> Any:
    """``orjson.loads`` with the cyclic garbage collector paused.

    Nested tensor data becomes one Python list per row (~50,000 for a
    224x224x3 image); with a framework's hundreds of thousands of objects
    alive, the collections those allocations trigger cost ~10x the parse
    itself (measured with TensorFlow loaded: ~180 ms against ~18 ms). Parsed
    JSON holds no reference cycles, so nothing is missed.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not _NON_FINITE_TOKEN.search(body):
            raise
        return _loads_non_finite(body, exc)
    finally:
        if enabled:
            gc.enable()


def _loads_non_finite(body: bytes, error: orjson.JSONDecodeError) -> Any:
    """A body orjson refused, parsed again accepting ``NaN``/``Infinity``/``-Infinity``.

    Python's ``json`` is slower, so only bodies that hold these tokens pay for
    it. What it accepts beyond them and orjson does not (lone surrogates) is
    refused with orjson's own error, so both paths take the same documents.
    """
    try:
        doc = json.loads(body.decode())  # UTF-8 only, as orjson
        orjson.dumps(doc)
    except (ValueError, RecursionError, orjson.JSONEncodeError):
        raise error from None
    return doc


def load_object(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object; anything else is :class:`InvalidInput`."""
    try:
        doc = loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    return doc


def decode_request(body: bytes, tensor_source: TensorSource | None = None) -> InferenceRequest:
    """Parse a V2 JSON inference request body.

    ``tensor_source`` lets the binary tensor extension supply inputs whose
    bytes follow the JSON header instead of a ``data`` field.
    """
    doc = load_object(body)
    raw_inputs = _require(doc, "inputs", list, "request")
    if not raw_inputs:
        raise InvalidInput("request: 'inputs' is empty")
    inputs = []
    shared = False
    for i, item in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where}: must be an object")
        name = _require(item, "name", str, where)
        datatype = _require(item, "datatype", str, where)
        shape = _require(item, "shape", list, where)
        params = _parameters(item, where)
        data: np.ndarray | None
        if names_region(params):  # read from its region by the data plane
            data = placeholder(name, params, "data" in item or "binary_data_size" in params)
            shared = True
        else:
            data = tensor_source(name, datatype, shape, params) if tensor_source else None
        if data is None:
            if "data" not in item:
                raise InvalidInput(f"input {name!r}: missing 'data'")
            data = tensor_from_json(name, datatype, shape, item["data"])
        inputs.append(InferInput(name, datatype, tuple(shape), data, params))
    raw_outputs = doc.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise InvalidInput("request: 'outputs' must be an array")
    outputs = []
    for i, item in enumerate(raw_outputs):
        where = f"outputs[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where}: must be an object")
        params = _parameters(item, where)
        shared = shared or names_region(params)
        outputs.append(RequestedOutput(_require(item, "name", str, where), params))
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InvalidInput("request: 'id' must be a string")
    return InferenceRequest(inputs, req_id, outputs, _parameters(doc, "request"), shared)


def json_floats(arr: np.ndarray) -> Any:
    """A C-contiguous float array as orjson should write it: itself when every value is
    finite (one ``np.isfinite`` pass), else JSON text with ``NaN``/``Infinity``/``-Infinity``
    where orjson would write null. A 0-d array becomes one number."""
    finite = np.isfinite(arr)
    if finite.all():
        return arr.item() if arr.ndim == 0 else arr
    bad = arr[~finite]
    tokens = np.where(np.isnan(bad), b"NaN", np.where(bad > 0, b"Infinity", b"-Infinity")).tolist()
    if arr.ndim == 0:
        return orjson.Fragment(tokens[0])
    # orjson writes every finite number as it would anyway, and null for exactly these values, in C order.
    parts = orjson.dumps(arr, option=orjson.OPT_SERIALIZE_NUMPY).split(b"null")
    return orjson.Fragment(parts[0] + b"".join(t + p for t, p in zip(tokens, parts[1:], strict=True)))


def json_data(arr: np.ndarray) -> Any:
    """A tensor as the flat ``data`` value of a V2 JSON output."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.dtype.kind == "f":
        return json_floats(flat)
    if flat.dtype.kind in _ORJSON_NATIVE:
        return flat
    if flat.dtype.kind in "OSU":
        return [_text(v) for v in flat.tolist()]
    return flat.tolist()


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def _output_doc(o: InferOutput) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": o.name, "datatype": o.datatype or v2_datatype(o.data.dtype), "shape": list(o.shape)}
    if not names_region(o.parameters):  # an output written to shared memory has no data here
        doc["data"] = json_data(o.data)
    if o.parameters:
        doc["parameters"] = o.parameters
    return doc


def encode_response(resp: InferenceResponse) -> bytes:
    """Serialize a V2 JSON inference response."""
    doc: dict[str, Any] = {
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "outputs": [_output_doc(o) for o in resp.outputs],
    }
    if resp.id is not None:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


#: Bodies read as V2 JSON. ``application/x-www-form-urlencoded`` is what ``curl -d`` sends
#: by default; V2 servers read the body as JSON whatever that header says.
JSON_CONTENT_TYPES = (
    "",
    "application/json",
    "text/plain",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
)


class JsonCodec:
    """``application/json`` bodies (and bodies with no content type)."""

    name = "json"
    content_type = "application/json"

    @staticmethod
    def accepts(content_type: str, headers: Mapping[str, str]) -> bool:
        return content_type in JSON_CONTENT_TYPES

    @staticmethod
    def decode(body: bytes, headers: Mapping[str, str]) -> InferenceRequest:
        return decode_request(body)

    @staticmethod
    def encode(response: InferenceResponse, request: InferenceRequest) -> tuple[bytes, dict[str, str]]:
        return encode_response(response), {"Content-Type": "application/json"}


@hookimpl
def dlinfer_codecs() -> list[type]:
    return [JsonCodec]
