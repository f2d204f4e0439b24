"""The public plugin API: the one stable surface a dlinfer plugin imports from.

Everything a plugin needs is here, and only here: ``from dlinfer.api import ...``.
The names listed below (this module's ``__all__``, and those of
:mod:`dlinfer.api.testing`) are stable: within a major version they keep their
meaning and signatures, and a change that breaks a plugin is announced in the
changelog and kept working, with a deprecation warning, for at least one minor
release first. Every other module (``dlinfer.config``, ``dlinfer.repository``,
``dlinfer.server``, ``dlinfer.builtin``, ...) is internal and changes without
notice; an import-linter contract keeps the project's own plugins to this module.

Hooks
    - ``hookimpl`` — marks a function as the implementation of a hook.
    - ``hookspec`` — marks a function as a hook specification, for plugins that
      declare hooks of their own (in ``dlinfer_addhooks``).
    - ``catalogue`` — marks such a hook specification as a catalogue: a registry of named
      classes built at start, duplicates refused.
    - ``Plugins`` — the node's plugin manager: ``registry(hook_name)``, ``hook``, ``config``.
    - ``BUILTIN_PLUGINS`` — module names of the built-in plugins (what ``[plugins] disable`` may name).

Models
    - ``Loader`` — base class of a backend: ``detect`` a format, ``load`` a :class:`Runner`.
    - ``Runner`` — base class of a loaded model: ``inputs``, ``outputs``, ``predict``, ``close``.
    - ``ModelConfig`` — a model's ``config.toml``, validated.
    - ``TensorConfig`` — one ``[[input]]``/``[[output]]`` entry of a model config.
    - ``TensorSpec`` — a named tensor: V2 datatype and shape (-1 for dynamic).
    - ``model_config_from_dict`` — validate a parsed ``config.toml`` into a :class:`ModelConfig`.

Node configuration
    - ``NodeConfig`` — the node's ``node.toml``, validated; ``plugin_settings(name)`` is your table.
    - ``node_config_from_dict`` — validate a parsed ``node.toml`` into a :class:`NodeConfig`.

Errors (each maps to one HTTP status and one gRPC code)
    - ``DlinferError`` — base of every error dlinfer reports on purpose.
    - ``ConfigError`` — a configuration file or setting is missing or invalid.
    - ``PluginLoadError`` — a plugin failed to import, or two claim one name.
    - ``ModelNotFound`` — no such model or version.
    - ``ModelNotReady`` — the model exists but cannot serve now.
    - ``ModelLoadError`` — a model's files could not be loaded (raise it from ``Loader.load``).
    - ``InvalidInput`` — the request is malformed or does not match the model.
    - ``PayloadTooLarge`` — the request body exceeds the size limit.
    - ``RequestTimeout`` — the client did not send its request in time.
    - ``Overloaded`` — the model's queue is full; retry later.
    - ``DeadlineExceeded`` — the request's deadline passed.
    - ``Unavailable`` — the server is starting, draining or otherwise not ready.
    - ``BodyBudgetExhausted`` — request bodies in flight already hold the memory budget.
    - ``Unauthenticated`` — a protected endpoint was called without valid credentials.
    - ``InferenceError`` — the framework raised while running a model.

Datatypes
    - ``numpy_dtype`` — the numpy dtype of a V2 datatype name.
    - ``v2_datatype`` — the V2 datatype name of a numpy dtype.
    - ``element_count`` — the number of elements of a shape.
    - ``V2_TO_NUMPY`` — the V2 datatype → numpy dtype table.

Optimizers
    - ``Optimizer`` — base class of an ``optimize`` pipeline step.
    - ``OptimizeContext`` — what a step may use besides the runner: model, files, samples.
    - ``OptimizeTolerance`` — how close an optimized model must stay to the original.

Converters
    - ``Converter`` — base class of a format conversion (usually to ONNX).
    - ``ConvertOptions`` — what the user asked of a conversion.
    - ``ConvertResult`` — where the converted model went and how close it came.

Numerics
    - ``compare_outputs`` — largest absolute and relative differences between two output sets.
    - ``Comparison`` — what ``compare_outputs`` returns.

ONNX sources
    - ``has_onnx`` — whether an ONNX form of the model exists or can be made.
    - ``onnx_file`` — an ONNX file of the model, exported at most once per pipeline.
    - ``custom_ops`` — ``(domain, op_type)`` of the non-standard nodes of an ONNX graph.
    - ``STANDARD_DOMAINS`` — the ONNX operator domains every runtime implements.

Settings (``[plugins.<name>]`` tables as frozen attrs classes)
    - ``build`` — build an attrs class from a TOML table, errors naming file and key.
    - ``setting`` — an attrs field with its documentation, for the configuration reference.
    - ``in_range`` — attrs validator: a number within bounds.
    - ``one_of`` — attrs validator: one of the given strings.
    - ``read_toml`` — read a TOML file, errors as :class:`ConfigError`.
    - ``read_config_file`` — read a file a setting names, relative to the config's folder.

Inference requests and responses
    - ``InferenceRequest`` — a decoded request: inputs, requested outputs, parameters.
    - ``InferenceResponse`` — a response before encoding: model, version, outputs.
    - ``InferInput`` — one input tensor of a request (numpy data).
    - ``InferOutput`` — one output tensor of a response (numpy data).
    - ``RequestedOutput`` — an output a request asks for, with its parameters.

Contracts (:mod:`dlinfer.api.protocols`)
    - ``RunnerProtocol`` — what the core calls on a loaded model.
    - ``LoaderProtocol`` — what the core calls on a backend.
    - ``ProcessorProtocol`` — a pre- or post-processor named in a model config.
    - ``PreProcessorProtocol`` — a pre-processor that describes what clients send.
    - ``PostProcessorProtocol`` — a post-processor that describes what clients receive.
    - ``CodecProtocol`` — a V2 HTTP body format.
    - ``BalancerProtocol`` — a gateway's balancing strategy.

Test helpers for plugin tests are in :mod:`dlinfer.api.testing`.
"""

from ..config import NodeConfig, node_config_from_dict
from ..convert import Converter, ConvertOptions, ConvertResult
from ..datatypes import V2_TO_NUMPY, element_count, numpy_dtype, v2_datatype
from ..errors import (
    BodyBudgetExhausted,
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
    RequestTimeout,
    Unauthenticated,
    Unavailable,
)
from ..hookspecs import catalogue, hookspec
from ..inference import InferenceRequest, InferenceResponse, InferInput, InferOutput, RequestedOutput
from ..model import (
    Loader,
    ModelConfig,
    OptimizeTolerance,
    Runner,
    TensorConfig,
    TensorSpec,
    model_config_from_dict,
)
from ..numerics import Comparison, compare_outputs
from ..onnx_source import STANDARD_DOMAINS, custom_ops, has_onnx, onnx_file
from ..optimize import OptimizeContext, Optimizer
from ..plugins import BUILTIN_PLUGINS, Plugins, hookimpl
from ..settings import build, in_range, one_of, read_config_file, read_toml, setting
from .protocols import (
    BalancerProtocol,
    CodecProtocol,
    LoaderProtocol,
    PostProcessorProtocol,
    PreProcessorProtocol,
    ProcessorProtocol,
    RunnerProtocol,
)

__all__ = [
    "BUILTIN_PLUGINS",
    "STANDARD_DOMAINS",
    "V2_TO_NUMPY",
    "BalancerProtocol",
    "BodyBudgetExhausted",
    "CodecProtocol",
    "Comparison",
    "ConfigError",
    "ConvertOptions",
    "ConvertResult",
    "Converter",
    "DeadlineExceeded",
    "DlinferError",
    "InferInput",
    "InferOutput",
    "InferenceError",
    "InferenceRequest",
    "InferenceResponse",
    "InvalidInput",
    "Loader",
    "LoaderProtocol",
    "ModelConfig",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "NodeConfig",
    "OptimizeContext",
    "OptimizeTolerance",
    "Optimizer",
    "Overloaded",
    "PayloadTooLarge",
    "PluginLoadError",
    "Plugins",
    "PostProcessorProtocol",
    "PreProcessorProtocol",
    "ProcessorProtocol",
    "RequestTimeout",
    "RequestedOutput",
    "Runner",
    "RunnerProtocol",
    "TensorConfig",
    "TensorSpec",
    "Unauthenticated",
    "Unavailable",
    "build",
    "catalogue",
    "compare_outputs",
    "custom_ops",
    "element_count",
    "has_onnx",
    "hookimpl",
    "hookspec",
    "in_range",
    "model_config_from_dict",
    "node_config_from_dict",
    "numpy_dtype",
    "one_of",
    "onnx_file",
    "read_config_file",
    "read_toml",
    "setting",
    "v2_datatype",
]
