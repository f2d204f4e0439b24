"""Entry point of the ``onnx`` plugin; stays light (onnxruntime loads with the first model)."""

from __future__ import annotations

from dlinfer.api import hookimpl


@hookimpl
def dlinfer_model_formats() -> list[type]:
    from .loader import OnnxLoader

    return [OnnxLoader]
