"""What a model is to the core: its config, its tensors, the Runner a loader
returns, and the Loader interface that backends implement.

The Runner surface is deliberately tiny (``inputs``, ``outputs``, ``predict``,
``close``): a backend plugin needs nothing else from the core.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import numpy as np

from .datatypes import V2_TO_NUMPY
from .settings import _Invalid, build, in_range, one_of, setting

if TYPE_CHECKING:
    from .config import NodeConfig


@attrs.frozen
class TensorSpec:
    """A named tensor: V2 datatype and full shape (-1 for a dynamic dimension,
    including the batch dimension when the model batches)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@attrs.frozen
class TensorConfig:
    """An ``[[input]]`` or ``[[output]]`` entry of a model's config.toml.

    ``shape`` excludes the batch dimension when ``max_batch_size > 0`` (as in Triton).
    """

    name: str = setting(help="Tensor name, as the model file calls it.")
    datatype: str = setting(help="V2 datatype, e.g. `FP32`, `INT64`, `BYTES`.", validator=one_of(*V2_TO_NUMPY))
    shape: tuple[int, ...] = setting(
        (), "Dimensions, `-1` for any size; without the batch dimension when `max_batch_size > 0`."
    )
    reshape: tuple[int, ...] | None = setting(
        None,
        "The shape the model itself takes or gives, when it differs from `shape` (which clients see); "
        "without the batch dimension, same element count (`[]`: a scalar per batch row). Inputs are "
        "reshaped to it, outputs from it.",
    )
    labels_file: str = setting(
        "",
        "Outputs: a text file in the model's folder with one class label per line; the classification "
        "extension (a requested output's `classification` parameter) adds the labels to its results.",
    )
    format: str = setting(
        "",
        "Inputs: image layout, `NCHW` or `NHWC`, reported by the model configuration endpoint for "
        "clients that prepare images; empty: none.",
        validator=one_of("", "NCHW", "NHWC"),
    )

    @shape.validator
    def _check_shape(self, _attr: attrs.Attribute, value: tuple[int, ...]) -> None:
        if any(d < -1 or d == 0 for d in value):
            raise _Invalid("dimensions that are positive or -1", list(value), "shape")

    @reshape.validator
    def _check_reshape(self, _attr: attrs.Attribute, value: tuple[int, ...] | None) -> None:
        if value is None:
            return
        if any(d < -1 or d == 0 for d in value) or value.count(-1) > 1:
            raise _Invalid("dimensions that are positive, at most one -1", list(value), "reshape")
        if not self.shape:
            raise _Invalid("a shape for the reshape to apply to", key="shape", kind="missing")

    @labels_file.validator
    def _check_labels_file(self, _attr: attrs.Attribute, value: str) -> None:
        if value and (Path(value).is_absolute() or ".." in Path(value).parts or "\\" in value):
            raise _Invalid("a file name inside the model's folder", value, "labels_file")


@attrs.frozen
class VersionPolicy:
    """Which versions of a model to serve: exactly one of the three keys."""

    latest: int | None = setting(None, "Serve the N highest versions (default: 1).", validator=in_range(1))
    all: bool = setting(False, "Serve every version on disk.")
    specific: tuple[int, ...] = setting((), "Serve exactly these versions.")

    def __attrs_post_init__(self) -> None:
        chosen = sum([self.latest is not None, self.all, bool(self.specific)])
        if chosen > 1:
            raise _Invalid("only one of latest, all, specific", key="latest")

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve, out of those present on disk."""
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1) :]


@attrs.frozen
class DynamicBatching:
    """``[dynamic_batching]``: how the scheduler merges requests."""

    preferred_batch_size: tuple[int, ...] = setting(
        (), "Batch sizes the batcher aims for; it runs a batch as soon as it reaches one."
    )
    max_queue_delay_us: int = setting(
        0, "How long a request may wait for others to join its batch.", validator=in_range(0)
    )


#: The kinds of ``[[sequence_batching.control_input]]`` (Triton's names).
SEQUENCE_START, SEQUENCE_END, SEQUENCE_READY, SEQUENCE_CORRID = (
    "CONTROL_SEQUENCE_START",
    "CONTROL_SEQUENCE_END",
    "CONTROL_SEQUENCE_READY",
    "CONTROL_SEQUENCE_CORRID",
)
#: V2 datatypes a correlation id can be given to the model in.
CORRID_DATATYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")


@attrs.frozen
class ControlInput:
    """One ``[[sequence_batching.control_input]]``: a model input the server fills for each request
    of a sequence; clients never send it.

    START, END and READY carry false/true as given by exactly one of ``int32_false_true``,
    ``fp32_false_true`` or ``bool_false_true`` (the tensor's datatype follows); CORRID carries
    the sequence id in ``data_type``.
    """

    name: str = setting(help="The model input that receives the control value.")
    kind: str = setting(
        help="`CONTROL_SEQUENCE_START` (true on a sequence's first request), `CONTROL_SEQUENCE_END` "
        "(true on its last), `CONTROL_SEQUENCE_READY` (true when the batch row holds a request) or "
        "`CONTROL_SEQUENCE_CORRID` (the sequence id).",
        validator=one_of(SEQUENCE_START, SEQUENCE_END, SEQUENCE_READY, SEQUENCE_CORRID),
    )
    int32_false_true: tuple[int, ...] = setting((), "`[false, true]` as an INT32 input.")
    fp32_false_true: tuple[float, ...] = setting((), "`[false, true]` as an FP32 input.")
    bool_false_true: tuple[bool, ...] = setting((), "`[false, true]` as a BOOL input.")
    data_type: str = setting(
        "", "CORRID only: the input's V2 datatype, one of " + ", ".join(f"`{t}`" for t in CORRID_DATATYPES) + "."
    )

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("int32_false_true", "fp32_false_true", "bool_false_true") if getattr(self, k)]
        if self.kind == SEQUENCE_CORRID:
            if given:
                raise _Invalid("no false/true values for CONTROL_SEQUENCE_CORRID (it carries the id)", key=given[0])
            if self.data_type not in CORRID_DATATYPES:
                raise _Invalid("one of " + ", ".join(repr(t) for t in CORRID_DATATYPES), self.data_type, "data_type")
            return
        if self.data_type:
            raise _Invalid(f"no data_type for {self.kind} (only CONTROL_SEQUENCE_CORRID has one)", key="data_type")
        if len(given) != 1:
            raise _Invalid(
                f"exactly one of int32_false_true, fp32_false_true, bool_false_true for {self.kind}", key="kind"
            )
        if len(getattr(self, given[0])) != 2:
            raise _Invalid("two values, [false, true]", list(getattr(self, given[0])), given[0])

    @property
    def datatype(self) -> str:
        """The V2 datatype of the tensor the server fills."""
        if self.kind == SEQUENCE_CORRID:
            return self.data_type
        if self.int32_false_true:
            return "INT32"
        return "FP32" if self.fp32_false_true else "BOOL"

    @property
    def false_true(self) -> tuple[Any, Any]:
        """The values standing for false and true (START, END, READY)."""
        values = self.int32_false_true or self.fp32_false_true or self.bool_false_true
        return values[0], values[1]


@attrs.frozen
class SequenceBatching:
    """``[sequence_batching]``: the model is stateful; the requests of one sequence (one
    ``sequence_id``) all run on the same instance, in order, with control inputs filled by the server."""

    strategy: str = setting(
        "direct",
        "`direct`: each instance holds `max(1, max_batch_size)` sequences, one per batch slot; "
        "`oldest`: each instance holds `max_candidate_sequences` sequences and batches their oldest requests.",
        validator=one_of("direct", "oldest"),
    )
    max_sequence_idle_microseconds: int = setting(
        1_000_000,
        "A sequence that receives no request for this long is released; later requests for it are refused.",
        validator=in_range(1),
    )
    max_candidate_sequences: int = setting(
        0, "`oldest` only: sequences each instance holds at once; `0`: `max(1, max_batch_size)`.", validator=in_range(0)
    )
    control_input: tuple[ControlInput, ...] = setting(
        (), "Model inputs the server fills for each request (clients do not send them)."
    )

    def __attrs_post_init__(self) -> None:
        names = [c.name for c in self.control_input]
        kinds = [c.kind for c in self.control_input]
        for seen, what in ((names, "name"), (kinds, "kind")):
            dup = sorted({x for x in seen if seen.count(x) > 1})
            if dup:
                raise _Invalid(f"one control_input per {what}, got {dup[0]!r} twice", key="control_input")
        if self.max_candidate_sequences and self.strategy != "oldest":
            raise _Invalid('strategy = "oldest" with max_candidate_sequences', key="max_candidate_sequences")


@attrs.frozen
class OptimizeTolerance:
    """``[optimize_tolerance]``: how close an optimized variant must stay to the original model.

    A variant passes when every element of each output satisfies
    ``|a - e| <= atol + rtol * max|e|``: the relative error is taken against the
    output's scale (its largest magnitude), because two correct f32 implementations
    that merely sum in another order already differ by more than any elementwise
    relative bound on values near zero. ``elementwise = true`` uses ``rtol * |e|``
    instead (numpy.allclose). With ``top1``, every row must also keep its arg-max
    along the last axis.
    """

    atol: float = setting(1e-5, "Absolute tolerance.", validator=in_range(0, kind="a number"))
    rtol: float = setting(
        1e-5, "Relative tolerance, against each output's largest magnitude.", validator=in_range(0, kind="a number")
    )
    top1: bool = setting(False, "Classifiers: also require the same top-1 class for every sample row.")
    elementwise: bool = setting(
        False, "Relative error per element (`rtol * |e|`, as numpy.allclose) instead of against the output's scale."
    )


@attrs.frozen
class EnsembleStep:
    """One ``[[ensemble.step]]``: a model of the same node and how its tensors join the ensemble's.

    Maps read as in Triton's ``ensemble_scheduling``: each key is a tensor name of the step's
    model, each value an ensemble tensor (an ensemble input or output, or an intermediate tensor
    one step produces and a later one takes).
    """

    model: str = setting(help="Name of the served model this step runs.")
    version: int = setting(-1, "Its version; `-1`: the latest ready version when the request runs.")
    input_map: dict[str, str] = setting(
        attrs.Factory(dict), "The step model's input name → the ensemble tensor fed to it."
    )
    output_map: dict[str, str] = setting(
        attrs.Factory(dict), "The step model's output name → the ensemble tensor it produces."
    )

    @version.validator
    def _check_version(self, _attr: attrs.Attribute, value: int) -> None:
        if value == 0 or value < -1:
            raise _Invalid("-1 (latest) or a positive version", value, "version")


@attrs.frozen
class Ensemble:
    """``[ensemble]``: a pipeline of other served models, wired by tensor names (``format = "ensemble"``)."""

    step: tuple[EnsembleStep, ...] = setting(
        (), "The steps; they run in the order their tensors need (a DAG), not the order listed."
    )


@attrs.frozen
class ModelConfig:
    """A model's ``config.toml``. Every key is optional: loaders read what they
    can from the model file itself."""

    name: str = setting("", "Must equal the model's folder name when given.")
    format: str = setting(
        "",
        "Loader format (`onnx`, `torchscript`, `savedmodel`, `keras`, `caffe`, ...); empty: detected from the files.",
    )
    max_batch_size: int | None = setting(
        None,
        "`0`: no batch dimension. Absent: batching when every input's first dimension is dynamic, up to the "
        "node's `limits.max_batch_size`.",
        validator=in_range(0),
    )
    input: tuple[TensorConfig, ...] = setting((), "Inputs; checked against the model file at load.")
    output: tuple[TensorConfig, ...] = setting((), "Outputs; checked against the model file at load.")
    version_policy: VersionPolicy = setting(VersionPolicy(), "Which versions to serve.")
    instance_count: int = setting(1, "Parallel executions of this model.", validator=in_range(1, 64))
    threads: int = setting(
        0,
        "Intra-op threads per instance of this model; `0`: the node's `[threads] intra_op`.",
        validator=in_range(0, 1024),
    )
    device: str = setting("cpu", "Where the backend runs it, e.g. `cpu` or `cuda:0`.")
    timeout_ms: int = setting(
        0, "Per-request deadline; `0`: none. A request's `timeout` parameter (µs) overrides it.", validator=in_range(0)
    )
    max_queue_size: int | None = setting(
        None, "Queue bound for this model; absent: the node's `limits.max_queue_size`.", validator=in_range(1)
    )
    max_queue_wait_ms: float | None = setting(
        None,
        "Expected-wait bound for this model's queue (`0`: none); absent: the node's `limits.max_queue_wait_ms`.",
        validator=in_range(0, kind="a number"),
    )
    dynamic_batching: DynamicBatching | None = setting(None, "Merge concurrent requests into batches.")
    sequence_batching: SequenceBatching | None = setting(
        None, "Stateful model: route each sequence's requests to one instance, in order, filling its control inputs."
    )
    optimize: tuple[str, ...] = setting(
        (),
        "Optimizers (`dlinfer_optimizers`) applied in order after loading; each step is checked against the "
        "original model on sample inputs and dropped if it drifts.",
    )
    optimize_tolerance: OptimizeTolerance = setting(OptimizeTolerance(), "The numerics gate of `optimize`.")
    optimize_options: dict[str, dict[str, Any]] = setting(
        attrs.Factory(dict),
        "`[optimize_options.<optimizer>]`: each optimizer's own settings; `atol`, `rtol`, `top1` and "
        "`elementwise` there override `optimize_tolerance` for that step.",
    )
    optimize_samples: str = setting(
        "",
        "Folder (inside the model's folder) of `*.npz` sample inputs for the gate, calibration and `warmup`; "
        "empty: random inputs generated from the input specs.",
    )
    warmup: int = setting(
        0,
        "Calls on sample inputs (`optimize_samples`, else one generated batch) before a version takes "
        "traffic, so its first requests do not pay the framework's lazy initialisation; `0`: none. A failing "
        "call fails the load.",
        validator=in_range(0, 100),
    )
    preprocess: tuple[str, ...] = setting((), "Processors (`dlinfer_processors`) run on the request's tensors.")
    postprocess: tuple[str, ...] = setting((), "Processors run on the model's outputs.")
    allow_pickle: bool = setting(
        False, "Let the loader unpickle files; needs `repository.allow_pickle` in node.toml too."
    )
    parameters: dict[str, Any] = setting(attrs.Factory(dict), "Backend-specific settings, documented by each backend.")
    ensemble: Ensemble | None = setting(
        None,
        'With `format = "ensemble"`: the steps of a pipeline of other models of this node; its '
        "`[[input]]` and `[[output]]` are the tensors clients send and receive.",
    )


def model_config_from_dict(data: dict[str, Any], source: str | Path) -> ModelConfig:
    """Validate a parsed ``config.toml`` into :class:`ModelConfig`."""
    return build(ModelConfig, data, source)


class Runner(abc.ABC):
    """A loaded model, as a backend plugin provides it.

    ``predict`` is called from a worker thread, never on the event loop, and
    at most ``instance_count`` calls run at once. Inputs arrive as numpy arrays
    already checked against ``inputs``; outputs are returned by name.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abc.abstractmethod
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on a batch."""

    def close(self) -> None:  # noqa: B027 - optional for runners holding nothing
        """Free what the model holds (sessions, device memory)."""


class Loader(abc.ABC):
    """A backend: turns model files into a :class:`Runner`.

    Loader classes are returned from the ``dlinfer_model_formats`` hook and are
    instantiated once per node with the node config.
    """

    #: Unique loader name, reported by ``dlinfer-core plugins list``.
    name: ClassVar[str]
    #: The ``format`` values of model configs this loader claims.
    formats: ClassVar[tuple[str, ...]]

    def __init__(self, node_config: NodeConfig) -> None:
        self.node_config = node_config

    @classmethod
    @abc.abstractmethod
    def detect(cls, path: Path) -> str | None:
        """The format of the version folder ``path`` if this loader can load it, else None.

        Must be cheap: look at file names, not file contents where possible.
        """

    @abc.abstractmethod
    def load(self, config: ModelConfig, path: Path) -> Runner:
        """Load the version folder ``path``; raise :class:`ModelLoadError` with the reason."""

    def threads(self, config: ModelConfig) -> int:
        """Intra-op threads for one instance of ``config``'s model: size every session or
        framework pool a loader creates with this (see :func:`intra_op_threads`)."""
        return intra_op_threads(config, self.node_config)


def intra_op_threads(config: ModelConfig, node_config: NodeConfig) -> int:
    """The effective intra-op thread count of one instance of a model: the one rule that
    loaders (:meth:`Loader.threads`) and optimizers (``OptimizeContext.threads``) follow.

    The model's ``threads``, else the node's ``[threads] intra_op``: both count threads per
    instance, as ONNX Runtime's and Triton's settings do. With neither set, the CPUs this
    process may use are shared among the model's ``instance_count`` instances (at least one
    each), so instances do not fight for the cores. ``config.threads`` alone is not the
    count: it is 0 when only the node sets it.
    """
    explicit = config.threads or node_config.threads.intra_op
    return explicit or max(1, node_config.intra_op_threads // config.instance_count)
