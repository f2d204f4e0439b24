"""Example dlinfer plugin: the custom ONNX operator ``dlinfer.example`` ``ScaledTanh`` on TensorRT.

Registered through the ``dlinfer.plugins`` entry point ``scaledtanh``. This is the
module the entry point names, so it stays light: the hook only names the op, and
the TensorRT plugin (:mod:`.trt_plugin`, which needs tensorrt and CuPy) is imported
when dlinfer-trt asks for the creator, right before it parses an ONNX graph.
"""

from __future__ import annotations

from typing import Any

from dlinfer.api import hookimpl

from .op import DOMAIN, OP_TYPE, scaled_tanh, scaled_tanh_model

__all__ = ["DOMAIN", "OP_TYPE", "ScaledTanhOp", "scaled_tanh", "scaled_tanh_model"]


class ScaledTanhOp:
    """The ``dlinfer_trt_plugins`` entry: the op type, and its TensorRT creator made on demand."""

    name = OP_TYPE

    @staticmethod
    def creator() -> Any:
        from .trt_plugin import shared_creator

        return shared_creator()


@hookimpl
def dlinfer_trt_plugins() -> list[Any]:
    return [ScaledTanhOp]
