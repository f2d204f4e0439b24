"""V2 protocol datatypes and their numpy equivalents."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInput

#: V2 datatype name -> numpy dtype. BYTES maps to object arrays of ``bytes``.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a V2 datatype name, or :class:`InvalidInput`."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"unsupported datatype {datatype!r}; expected one of {', '.join(V2_TO_NUMPY)}") from None


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype name for a numpy dtype (strings and bytes become BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return NUMPY_TO_V2[dtype]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no V2 datatype") from None


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    """Number of elements in a tensor of ``shape``."""
    n = 1
    for d in shape:
        n *= d
    return n


#: Dimensions a tensor may have: numpy (so every framework array here) stops at 64.
MAX_DIMS = 64

#: Product of a shape's non-zero dimensions beyond which no tensor can exist.
MAX_SPAN = 2**48


def check_shape(name: str, shape: Any, max_elements: int | None = None) -> int:
    """Validate a wire shape before any array is built from it; return its element count.

    Every frontend (JSON, binary tensors, gRPC) calls this, so a shape numpy
    would refuse is a clear :class:`InvalidInput` everywhere, never a crash.
    """
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be an array of non-negative integers, got {shape!r}")
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input {name!r}: shape has {len(shape)} dimensions; a tensor can have at most {MAX_DIMS}")
    n = element_count(shape)
    if max_elements is not None and n > max_elements:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} has {n} elements, over the limit of {max_elements} "
            "(limits.max_tensor_elements)"
        )
    # numpy refuses such shapes even with a zero dimension (e.g. [0, 2**40, 2**40]).
    if element_count([d or 1 for d in shape]) > MAX_SPAN:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} is too large")
    return n
