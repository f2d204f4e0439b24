"""The contracts the core holds plugin objects to, stated as :class:`typing.Protocol` classes.

Each protocol says what the core calls on an object a plugin hands it, and how.
Subclassing :class:`~dlinfer.api.Loader` or :class:`~dlinfer.api.Runner` is the
easy way to meet the first two; codecs, processors and balancers have no base
class and only need the members listed here. All are ``runtime_checkable`` and
every parameter the core passes positionally is positional-only, so an
implementation may name its parameters as it likes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from ..inference import InferenceRequest, InferenceResponse
    from ..model import ModelConfig, TensorSpec

__all__ = [
    "BalancerProtocol",
    "CodecProtocol",
    "LoaderProtocol",
    "PostProcessorProtocol",
    "PreProcessorProtocol",
    "ProcessorProtocol",
    "RunnerProtocol",
]


@runtime_checkable
class RunnerProtocol(Protocol):
    """A loaded model (what ``Loader.load`` returns and ``dlinfer_load_model`` may return).

    ``predict`` runs in a worker thread, at most ``instance_count`` calls at once, on
    inputs already checked against ``inputs``; ``close`` frees what the model holds
    when it is unloaded.
    """

    @property
    def inputs(self) -> Sequence[TensorSpec]: ...

    @property
    def outputs(self) -> Sequence[TensorSpec]: ...

    def predict(self, inputs: dict[str, np.ndarray], /) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class LoaderProtocol(Protocol):
    """A backend, as an instance of a class returned by ``dlinfer_model_formats``.

    The core builds each loader class once per node as ``cls(node_config)``, picks it
    by ``formats`` (or by ``detect`` when a model's config names no format) and calls
    ``load`` in a worker thread.
    """

    @property
    def name(self) -> str: ...

    @property
    def formats(self) -> Sequence[str]: ...

    def detect(self, path: Path, /) -> str | None: ...

    def load(self, config: ModelConfig, path: Path, /) -> RunnerProtocol: ...


@runtime_checkable
class ProcessorProtocol(Protocol):
    """A pre- or post-processor, as an instance of a class returned by ``dlinfer_processors``.

    Built once per model version with no arguments; called in the model's worker
    thread on the request's tensors (pre) or the model's outputs (post).
    """

    @property
    def name(self) -> str: ...

    def __call__(self, tensors: dict[str, np.ndarray], config: ModelConfig, /) -> dict[str, np.ndarray]: ...


@runtime_checkable
class PreProcessorProtocol(ProcessorProtocol, Protocol):
    """A pre-processor that says what clients send instead of the model's inputs.

    ``request_inputs`` is called once at load; metadata and request checks follow
    what it returns. A pre-processor without it turns request checks off.
    """

    def request_inputs(self, inputs: list[TensorSpec], config: ModelConfig, /) -> Sequence[TensorSpec]: ...


@runtime_checkable
class PostProcessorProtocol(ProcessorProtocol, Protocol):
    """A post-processor that says what clients receive instead of the model's outputs."""

    def response_outputs(self, outputs: list[TensorSpec], config: ModelConfig, /) -> Sequence[TensorSpec]: ...


@runtime_checkable
class CodecProtocol(Protocol):
    """A V2 HTTP body format, as the object (usually a class of static methods)
    returned by ``dlinfer_codecs``.

    The newest-registered codec whose ``accepts`` is true decodes the request and
    encodes its response.
    """

    @property
    def name(self) -> str: ...

    def accepts(self, content_type: str, headers: Mapping[str, str], /) -> bool: ...

    def decode(self, body: bytes, headers: Mapping[str, str], /) -> InferenceRequest: ...

    def encode(self, response: InferenceResponse, request: InferenceRequest, /) -> tuple[bytes, dict[str, str]]: ...


@runtime_checkable
class BalancerProtocol(Protocol):
    """A gateway's balancing strategy, as an instance of a class returned by ``dlinfer_balancers``.

    Built once per model; ``pick`` chooses among the nodes that have the model ready
    (never empty) and ``observe`` hears how each attempt went (``"success"`` or
    ``"failure"``). Both run on the event loop and must not block.
    """

    @property
    def name(self) -> str: ...

    def pick(self, model: str, candidates: Sequence[Any], request: Any, /) -> Any: ...

    def observe(self, node: Any, outcome: str, latency_s: float, /) -> None: ...
