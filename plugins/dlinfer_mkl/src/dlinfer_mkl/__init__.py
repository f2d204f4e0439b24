"""CPU optimizers for dlinfer: threads, TorchScript freezing, ONNX Runtime, OpenVINO, bf16 and int8."""

__version__ = "0.1.0"
