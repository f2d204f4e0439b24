"""TensorFlow signatures as dlinfer sees them, and the SignatureDef protos
TF-Serving clients read from the metadata endpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
import numpy as np

from dlinfer.api import InvalidInput, ModelLoadError, TensorSpec, v2_datatype

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"

#: V2 datatype -> TensorFlow DataType enum name (as TF-Serving prints it).
V2_TO_TF = {
    "BOOL": "DT_BOOL",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING",
}

Call = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@attrs.frozen
class Signature:
    """One callable signature of a model: its method, tensors and function."""

    name: str
    method_name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: numpy in, numpy out: what the runner serves.
    call: Call = attrs.field(eq=False, repr=False)
    #: TensorFlow tensors in (positional, in ``inputs`` order), dict of tensors out: what exporters trace.
    function: Callable[..., dict[str, Any]] = attrs.field(eq=False, repr=False)
    #: The SignatureDef proto (from saved_model.pb, or built from the tensors).
    definition: Any = attrs.field(eq=False, repr=False, default=None)


def tensor_spec(name: str, shape: Any, dtype: Any, kind: str) -> TensorSpec:
    """A dlinfer TensorSpec from a TensorFlow shape and dtype."""
    try:
        datatype = v2_datatype(np.dtype(dtype.as_numpy_dtype))
    except (InvalidInput, TypeError):
        raise ModelLoadError(f"{kind} {name!r} has dtype {dtype.name}, which dlinfer cannot serve") from None
    if shape.rank is None:
        if kind == "input":
            raise ModelLoadError(f"input {name!r} has unknown rank; give the signature a fixed-rank input")
        return TensorSpec(name, datatype, (-1,))
    return TensorSpec(name, datatype, tuple(-1 if d is None else int(d) for d in shape.as_list()))


def signature_def(inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec], method_name: str = PREDICT) -> Any:
    """A SignatureDef proto describing ``inputs``/``outputs`` (models that carry none)."""
    from tensorflow.core.framework import tensor_shape_pb2, types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    sig = meta_graph_pb2.SignatureDef(method_name=method_name)
    for target, specs in ((sig.inputs, inputs), (sig.outputs, outputs)):
        for spec in specs:
            shape = tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in spec.shape]
            )
            target[spec.name].CopyFrom(
                meta_graph_pb2.TensorInfo(
                    name=spec.name, dtype=types_pb2.DataType.Value(V2_TO_TF[spec.datatype]), tensor_shape=shape
                )
            )
    return sig
