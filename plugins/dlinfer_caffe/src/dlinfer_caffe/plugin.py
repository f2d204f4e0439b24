"""Entry point of the ``caffe`` plugin; stays light (protobuf, onnx and onnxruntime load with the first model)."""

from __future__ import annotations

from dlinfer.api import hookimpl


@hookimpl
def dlinfer_model_formats() -> list[type]:
    from .loader import CaffeLoader

    return [CaffeLoader]


@hookimpl
def dlinfer_converters() -> list[type]:
    from .converter import CaffeToOnnx

    return [CaffeToOnnx]
