"""Built-in plugin: the V2 binary tensor extension for HTTP.

A request body is a JSON header followed by raw tensor bytes; the header's
length is given in the ``Inference-Header-Content-Length`` HTTP header. An input
whose parameters carry ``binary_data_size`` takes that many bytes from the tail,
in input order. Outputs are returned the same way when the request asks for it
(``binary_data`` on an output, or ``binary_data_output`` on the request).

Fixed-size datatypes are read with ``np.frombuffer`` (no copy, no per-element
Python); BYTES elements are each a 4-byte little-endian length and the bytes.
The same tensor <-> bytes functions serve gRPC's ``raw_input_contents`` and
``raw_output_contents``.

Without the header a body is plain V2 JSON, so this codec is a superset of the
JSON codec and is asked first.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from ..datatypes import check_shape, numpy_dtype
from ..errors import InvalidInput
from ..inference import InferenceRequest, InferenceResponse
from ..plugins import hookimpl
from ..shared_memory import names_region
from .json_codec import JsonCodec, decode_request, encode_response, json_data

HEADER_LENGTH = "Inference-Header-Content-Length"

_LEN = struct.Struct("<I")


def tensor_from_bytes(name: str, datatype: str, shape: Any, buf: bytes | memoryview) -> np.ndarray:
    """A numpy array of ``shape`` read from raw little-endian bytes (zero-copy for fixed-size types)."""
    count = check_shape(name, shape)
    dtype = numpy_dtype(datatype)
    if datatype == "BYTES":
        arr = _bytes_elements(name, buf, count)
    else:
        expected = count * dtype.itemsize
        if len(buf) != expected:
            raise InvalidInput(
                f"input {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, got {len(buf)}"
            )
        arr = np.frombuffer(buf, dtype=dtype.newbyteorder("<"))
        if datatype == "BOOL" and arr.size and arr.view(np.uint8).max() > 1:
            raise InvalidInput(f"input {name!r}: BOOL bytes must be 0 or 1")
    return arr.reshape(tuple(shape))


def _bytes_elements(name: str, buf: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(buf)
    if count * 4 > len(view):  # every element has a 4-byte length: refuse before allocating
        raise InvalidInput(f"input {name!r}: {count} BYTES elements need at least {count * 4} bytes, got {len(view)}")
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"input {name!r}: BYTES data ends after {i} of {count} elements")
        (size,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + size > len(view):
            raise InvalidInput(f"input {name!r}: BYTES element {i} claims {size} bytes, only {len(view) - offset} left")
        out[i] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(view):
        raise InvalidInput(f"input {name!r}: {len(view) - offset} bytes follow the last of {count} BYTES elements")
    return out


def tensor_to_bytes(arr: np.ndarray, datatype: str) -> bytes | memoryview:
    """Raw little-endian bytes of a tensor (BYTES: length-prefixed elements)."""
    if datatype == "BYTES":
        parts = []
        for v in np.asarray(arr, dtype=object).reshape(-1).tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    dtype = numpy_dtype(datatype).newbyteorder("<")
    # A flat uint8 view, not memoryview.cast: cast refuses views with a zero in the shape (empty batches).
    return np.ascontiguousarray(arr, dtype=dtype).reshape(-1).view(np.uint8).data


class _Tail:
    """Hands out the binary tail of a request to the inputs that claim it, in order."""

    def __init__(self, tail: memoryview) -> None:
        self.tail = tail
        self.offset = 0

    def __call__(self, name: str, datatype: str, shape: list[int], params: dict[str, Any]) -> np.ndarray | None:
        size = params.get("binary_data_size")
        if size is None:
            return None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {name!r}: 'binary_data_size' must be a non-negative integer, got {size!r}")
        if self.offset + size > len(self.tail):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(self.tail) - self.offset} bytes left)"
            )
        chunk = self.tail[self.offset : self.offset + size]
        self.offset += size
        return tensor_from_bytes(name, datatype, shape, chunk)

    def finish(self) -> None:
        left = len(self.tail) - self.offset
        if left:
            raise InvalidInput(f"{left} bytes of binary data after the JSON header belong to no input")


def header_length(headers: Mapping[str, str], body_size: int) -> int | None:
    """The JSON header's length from ``Inference-Header-Content-Length``, checked against the body."""
    raw = headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or not raw.isascii():
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {raw[:40]!r}")
    n = int(raw)
    if n > body_size:
        raise InvalidInput(f"{HEADER_LENGTH} is {n}, but the body has only {body_size} bytes")
    return n


def decode(body: bytes, headers: Mapping[str, str]) -> InferenceRequest:
    """Decode a V2 request that may carry binary tensors after its JSON header."""
    n = header_length(headers, len(body))
    view = memoryview(body)
    tail = _Tail(view[n:] if n is not None else view[:0])
    request = decode_request(body[:n] if n is not None else body, tail)
    tail.finish()
    return request


def _binary_outputs(response: InferenceResponse, request: InferenceRequest) -> set[str]:
    default = request.parameters.get("binary_data_output") is True
    asked = {o.name: o.parameters.get("binary_data", default) for o in request.outputs}
    return {o.name for o in response.outputs if asked.get(o.name, default) is True}


def encode(response: InferenceResponse, request: InferenceRequest) -> tuple[bytes, dict[str, str]]:
    """Encode a response; outputs the request asked for in binary follow the JSON header."""
    binary = _binary_outputs(response, request)
    if not binary:
        return encode_response(response), {"Content-Type": "application/json"}
    outputs = []
    chunks: list[bytes | memoryview] = []
    for o in response.outputs:
        doc: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        params = dict(o.parameters)
        if names_region(params):  # written to shared memory: neither data nor bytes here
            pass
        elif o.name in binary:
            raw = tensor_to_bytes(o.data, o.datatype)
            params["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            doc["data"] = json_data(o.data)
        if params:
            doc["parameters"] = params
        outputs.append(doc)
    head: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        head["id"] = response.id
    if response.parameters:
        head["parameters"] = response.parameters
    head["outputs"] = outputs
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


class BinaryCodec:
    """V2 JSON with the binary tensor extension (``Inference-Header-Content-Length``)."""

    name = "binary"
    content_type = "application/octet-stream"

    @staticmethod
    def accepts(content_type: str, headers: Mapping[str, str]) -> bool:
        return HEADER_LENGTH in headers or JsonCodec.accepts(content_type, headers)

    decode = staticmethod(decode)
    encode = staticmethod(encode)


@hookimpl
def dlinfer_codecs() -> list[type]:
    return [BinaryCodec]
