"""PyTorch backend for dlinfer: loaders, classification processors and the ONNX exporter."""

__version__ = "0.1.0"
