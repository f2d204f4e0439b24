"""ONNX Runtime backend for dlinfer."""

__version__ = "0.1.0"
