"""TensorRT backend for dlinfer: ONNX -> engine builder, engine cache, GPU runner."""

__version__ = "0.1.0"
