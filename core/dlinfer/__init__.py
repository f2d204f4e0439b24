"""dlinfer: a plugin-microkernel inference server speaking the KServe V2 protocol.

The names here (:data:`hookimpl`, the :class:`Loader`/:class:`Runner`
interface, tensor and config types, the error hierarchy) are the same objects
as in :mod:`dlinfer.api`, kept for applications and scripts; plugins import
from :mod:`dlinfer.api`, the stable plugin API.
"""

from .errors import (
    ConfigError,
    DeadlineExceeded,
    DlinferError,
    InferenceError,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    PluginLoadError,
    Unavailable,
)
from .model import Loader, ModelConfig, Runner, TensorConfig, TensorSpec
from .plugins import hookimpl

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "DlinferError",
    "InferenceError",
    "InvalidInput",
    "Loader",
    "ModelConfig",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "PayloadTooLarge",
    "PluginLoadError",
    "Runner",
    "TensorConfig",
    "TensorSpec",
    "Unavailable",
    "__version__",
    "hookimpl",
]
