"""The hooks dlinfer-trt offers other plugins, declared through ``dlinfer_addhooks``."""

from __future__ import annotations

from typing import Any

from dlinfer.api import catalogue, hookspec


@catalogue
@hookspec
def dlinfer_trt_plugins() -> list[Any]:
    """Return TensorRT operator plugins for custom ONNX ops.

    Each item has a ``name`` (the ONNX op type it implements) and either has
    ``library``, the path of a shared library that registers its creators, or
    stands for a plugin creator: an item with a ``creator()`` factory returning
    one (so the hook module need not import tensorrt), a creator class (a
    ``trt.IPluginCreatorV3One`` subclass), or a creator object. dlinfer-trt
    registers them with TensorRT's plugin registry at node start (when a GPU
    is usable) and before any ONNX model is parsed. Without dlinfer-trt loaded,
    an implementation stops the node unless marked ``@hookimpl(optionalhook=True)``.
    """
