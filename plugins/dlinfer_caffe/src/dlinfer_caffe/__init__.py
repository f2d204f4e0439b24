"""Caffe models for dlinfer, without Caffe: its files read with the project's own
schema, converted to ONNX and served through dlinfer-onnx."""

__version__ = "0.1.0"
