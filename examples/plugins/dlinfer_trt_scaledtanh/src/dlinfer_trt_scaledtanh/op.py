"""What ``ScaledTanh`` computes, in numpy, and a tiny ONNX model that uses it.

``y = alpha * tanh(beta * x)``, elementwise, for float32 and float16 tensors; the
float attributes ``alpha`` and ``beta`` default to 1. The numpy function is the
reference the TensorRT plugin is checked against.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

OP_TYPE = "ScaledTanh"
DOMAIN = "dlinfer.example"
#: The ONNX parser asks the registry for version "1" unless the node says otherwise.
PLUGIN_VERSION = "1"
#: The op's attributes and their defaults (used when a node leaves one out).
ATTRIBUTES = {"alpha": 1.0, "beta": 1.0}


def read_attributes(fields: Iterable[tuple[str, Any]]) -> dict[str, float]:
    """``alpha`` and ``beta`` from ``(name, data)`` pairs: the plugin fields TensorRT passes
    (a node's attributes, or what an engine serialized). Absent ones keep their defaults;
    fields of other names are ignored."""
    values = dict(ATTRIBUTES)
    for name, data in fields:
        if name not in values:
            continue
        flat = np.asarray(data, dtype=np.float32).reshape(-1)
        if flat.size != 1:
            raise ValueError(f"{OP_TYPE}: attribute {name!r} must be one float, not {flat.size} values")
        values[name] = float(flat[0])
    return values


def scaled_tanh(x: np.ndarray, alpha: float = 1.0, beta: float = 1.0) -> np.ndarray:
    """``alpha * tanh(beta * x)`` computed in float32 (as the GPU kernel does), in ``x``'s dtype."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float16):
        raise TypeError(f"{OP_TYPE} takes float32 or float16 tensors, not {x.dtype}")
    y = np.float32(alpha) * np.tanh(np.float32(beta) * x.astype(np.float32))
    return y.astype(x.dtype)


def scaled_tanh_model(alpha: float, beta: float, bias: np.ndarray) -> bytes:
    """``x [batch, n] -> ScaledTanh(alpha, beta) -> + bias -> y``: the custom op feeding a standard one.

    ``n`` is ``len(bias)``. The result of the model is ``scaled_tanh(x, alpha, beta) + bias``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bias = np.asarray(bias, np.float32).reshape(-1)
    n = bias.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node(OP_TYPE, ["x"], ["t"], name="scaled_tanh", domain=DOMAIN, alpha=alpha, beta=beta),
            helper.make_node("Add", ["t", "bias"], ["y"], name="add_bias"),
        ],
        "scaled_tanh",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        initializer=[numpy_helper.from_array(bias, "bias")],
        value_info=[helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", n])],
    )
    model: Any = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
