"""TensorFlow backend for dlinfer: SavedModel and Keras loaders, a TF-Serving
compatible frontend (REST and gRPC) and ONNX export through tf2onnx."""

__version__ = "0.1.0"
