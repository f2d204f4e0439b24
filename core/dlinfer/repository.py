"""The model repository: discovery, versions, load and unload.

Layout (as in Triton)::

    <repository>/<model name>/config.toml        optional
    <repository>/<model name>/<version>/<files>  version = a positive integer

A model that fails to load is reported with its reason in the index and does
not stop the others. No path may leave the repository: symlinks that point
outside it and names with path separators or ``..`` are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from . import classification
from .classification import read_labels
from .datatypes import v2_datatype
from .ensemble import ENSEMBLE, EnsembleRunner
from .errors import (
    DeadlineExceeded,
    DlinferError,
    InferenceError,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    Unavailable,
)
from .inference import InferenceRequest, InferenceResponse, InferOutput
from .load_override import LoadOverride
from .model import ModelConfig, Runner, TensorSpec, model_config_from_dict
from .optimize import optimize_runner
from .scheduler import DirectScheduler, DynamicBatcher, Scheduler
from .sequence import SequenceBatcher
from .settings import read_toml
from .stats import ModelStats
from .triton.config import CONFIG_FILE as TRITON_CONFIG
from .triton.config import read_triton_config
from .warmup import warm_up

if TYPE_CHECKING:
    from .config import NodeConfig
    from .plugins import Plugins

log = logging.getLogger("dlinfer.repository")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

READY, LOADING, UNAVAILABLE, UNLOADING = "READY", "LOADING", "UNAVAILABLE", "UNLOADING"


def check_name(name: str, what: str = "model name") -> str:
    """Refuse names that could escape a folder or confuse a URL."""
    if not NAME_RE.match(name):
        raise ModelNotFound(f"invalid {what} {name!r}: use letters, digits, '_', '-', '.'")
    return name


def safe_child(root: Path, parent: Path, name: str) -> Path:
    """``parent / name``, refused if it is a symlink or resolves outside ``root``."""
    path = parent / name
    if path.is_symlink():
        raise ModelLoadError(f"{path.relative_to(root)}: symlinks are not followed in the repository")
    if not path.resolve().is_relative_to(root):
        raise ModelLoadError(f"{name!r} resolves outside the model repository")
    return path


def check_tree(root: Path, folder: Path) -> None:
    """Refuse a version folder holding any link that points outside the repository."""
    for dirpath, dirnames, filenames in os.walk(folder):
        for entry in dirnames + filenames:
            p = Path(dirpath) / entry
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                raise ModelLoadError(f"{p.relative_to(root)} is a link to outside the model repository; refused")


@attrs.define
class VersionStatus:
    """State of one model version as the repository index reports it."""

    name: str
    version: int | None
    state: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "state": self.state, "reason": self.reason}
        if self.version is not None:
            doc["version"] = str(self.version)
        return doc


#: The built-in plugin whose ``dlinfer_infer`` only calls the model's runner.
BUILTIN_INFER = "dlinfer.builtin.loading"


class ServedModel:
    """One loaded model version: its runner behind a scheduler, plus validation."""

    def __init__(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        runner: Runner,
        plugins: Plugins,
        platform: str = "",
        optimized: list[dict[str, Any]] | None = None,
        labels: dict[str, list[str]] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.runner = runner
        self.platform = platform or config.format
        self.inputs: list[TensorSpec] = list(runner.inputs)
        self.outputs: list[TensorSpec] = list(runner.outputs)
        self._input_by_name = {t.name: t for t in self.inputs}
        self._output_by_name = {t.name: t for t in self.outputs}
        limits = plugins.config.limits
        self.max_batch_size = self._batching(config, limits.max_batch_size)
        self._check_config_tensors()
        self._reshapes = self._apply_reshapes()
        #: Class labels of outputs, for the classification extension (see :mod:`dlinfer.classification`).
        self.labels = labels or {}
        self._control_inputs = self._take_control_inputs()
        self._hook = plugins.hook
        self._infer = self._pick_infer()
        self.preprocess = _resolve_processors(plugins, config.preprocess)
        self.postprocess = _resolve_processors(plugins, config.postprocess)
        self._describe_processed_tensors()
        wait_ms = limits.max_queue_wait_ms if config.max_queue_wait_ms is None else config.max_queue_wait_ms
        self.scheduler = self._make_scheduler(config.max_queue_size or limits.max_queue_size, wait_ms / 1000)
        self.stats = ModelStats()
        #: What the ``optimize`` pipeline did, step by step (see ``PipelineResult.report``).
        self.optimized = optimized or []
        self.scheduler.observers.append(self.stats)
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def _make_scheduler(self, max_queue_size: int, max_queue_wait_s: float) -> Scheduler | SequenceBatcher:
        """A sequence batcher for a stateful model (``[sequence_batching]``); a dynamic batcher when the
        model batches and has ``[dynamic_batching]``; else the direct path."""
        label = f"{self.name}:{self.version}"
        if self.config.sequence_batching is not None:
            return SequenceBatcher(
                label,
                self._run,
                self.config.instance_count,
                max_queue_size,
                self.max_batch_size,
                self.config.sequence_batching,
                max_queue_wait_s,
            )
        batching = self.config.dynamic_batching
        if self.max_batch_size > 0 and batching is not None:
            return DynamicBatcher(
                label,
                self._run,
                self.config.instance_count,
                max_queue_size,
                self.max_batch_size,
                batching.preferred_batch_size,
                batching.max_queue_delay_us,
                max_queue_wait_s,
            )
        return DirectScheduler(label, self._run, self.config.instance_count, max_queue_size, max_queue_wait_s)

    # ------------------------------------------------------------ description

    def _batching(self, config: ModelConfig, node_max: int) -> int:
        dynamic_first = all(t.shape and t.shape[0] == -1 for t in self.inputs)
        if config.max_batch_size is None:
            return node_max if dynamic_first and self.inputs else 0
        if config.max_batch_size > 0 and not dynamic_first:
            fixed = [t.name for t in self.inputs if not t.shape or t.shape[0] != -1]
            raise ModelLoadError(
                f"max_batch_size is {config.max_batch_size} but inputs {fixed} have no dynamic first (batch) dimension"
            )
        return config.max_batch_size

    def _check_config_tensors(self) -> None:
        """Inputs/outputs stated in config.toml must agree with the model file."""
        for kind, stated, actual in (
            ("input", self.config.input, self._input_by_name),
            ("output", self.config.output, self._output_by_name),
        ):
            for t in stated:
                spec = actual.get(t.name)
                if spec is None:
                    raise ModelLoadError(
                        f"config.toml names {kind} {t.name!r}, but the model's {kind}s are {sorted(actual)}"
                    )
                if spec.datatype != t.datatype:
                    raise ModelLoadError(
                        f"config.toml says {kind} {t.name!r} is {t.datatype}, the model says {spec.datatype}"
                    )

    def _take_control_inputs(self) -> set[str]:
        """The model inputs that ``[sequence_batching]`` fills: checked against the model file and
        hidden from clients (metadata and requests), who never send them."""
        sequencing = self.config.sequence_batching
        if sequencing is None:
            return set()
        for control in sequencing.control_input:
            spec = self._input_by_name.get(control.name)
            if spec is None:
                raise ModelLoadError(
                    f"sequence_batching names control input {control.name!r}, but the model's inputs are "
                    f"{sorted(self._input_by_name)}"
                )
            if spec.datatype != control.datatype:
                raise ModelLoadError(
                    f"sequence_batching fills control input {control.name!r} ({control.kind}) as "
                    f"{control.datatype}, the model says {spec.datatype}"
                )
        names = {c.name for c in sequencing.control_input}
        self.inputs = [t for t in self.inputs if t.name not in names]
        self._input_by_name = {t.name: t for t in self.inputs}
        return names

    def _apply_reshapes(self) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """Describe tensors that have a ``reshape`` as clients see them (their ``shape``). Returns
        the shapes, per batch row, that inputs take to the model and outputs take back to clients."""
        batch = (-1,) if self.max_batch_size else ()
        maps: list[dict[str, tuple[int, ...]]] = []
        for kind, stated, specs in (
            ("input", self.config.input, self.inputs),
            ("output", self.config.output, self.outputs),
        ):
            pairs = {t.name: (t.shape, t.reshape) for t in stated if t.reshape is not None}
            for i, spec in enumerate(specs):
                if spec.name not in pairs:
                    continue
                shape, reshape = pairs[spec.name]
                model_shape = batch + reshape
                if -1 not in shape + reshape and int(np.prod(shape)) != int(np.prod(reshape)):
                    raise ModelLoadError(
                        f"{kind} {spec.name!r}: shape {list(shape)} and reshape {list(reshape)} "
                        "hold different numbers of elements"
                    )
                if len(spec.shape) != len(model_shape) or any(
                    -1 not in (m, d) and m != d for m, d in zip(spec.shape, model_shape, strict=True)
                ):
                    raise ModelLoadError(
                        f"{kind} {spec.name!r}: reshape {list(reshape)} does not match the model's shape "
                        f"{list(spec.shape[len(batch) :])}"
                    )
                specs[i] = TensorSpec(spec.name, spec.datatype, batch + shape)
            # Inputs travel to the model's shape, outputs back to the clients'.
            maps.append({n: (r if kind == "input" else s) for n, (s, r) in pairs.items()})
        self._input_by_name = {t.name: t for t in self.inputs}
        self._output_by_name = {t.name: t for t in self.outputs}
        return maps[0], maps[1]

    def _describe_processed_tensors(self) -> None:
        """Let processors say what clients send and receive in place of the model's own tensors.

        A pre-processor may define ``request_inputs(inputs, config)`` and a post-processor
        ``response_outputs(outputs, config)``, each mapping a list of :class:`TensorSpec` to
        another (an image decoder takes BYTES where the model takes FP32 pixels). Metadata
        and the names a request may use then follow them; processors without these keep
        the model's tensors. Requests are checked against the inputs unless a pre-processor
        in the chain does not describe what it takes.
        """
        self._check_inputs = all(hasattr(p, "request_inputs") for p in self.preprocess)
        for proc in reversed(self.preprocess):
            if hasattr(proc, "request_inputs"):
                self.inputs = list(proc.request_inputs(list(self.inputs), self.config))
        for proc in self.postprocess:
            if hasattr(proc, "response_outputs"):
                self.outputs = list(proc.response_outputs(list(self.outputs), self.config))
        self._input_by_name = {t.name: t for t in self.inputs}
        self._output_by_name = {t.name: t for t in self.outputs}

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [str(self.version)],
            "platform": self.platform,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    # -------------------------------------------------------------- inference

    def validate(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        """Check a request against the model's inputs; return the input arrays."""
        seen: dict[str, np.ndarray] = {}
        batch: int | None = None
        for inp in request.inputs:
            spec = self._input_by_name.get(inp.name)
            if spec is None and inp.name in self._control_inputs:
                raise InvalidInput(
                    f"input {inp.name!r} of model {self.name!r} is a sequence control input: the server fills it"
                )
            if spec is None:
                raise InvalidInput(
                    f"model {self.name!r} has no input {inp.name!r}; its inputs are "
                    f"{', '.join(sorted(self._input_by_name))}"
                )
            if inp.name in seen:
                raise InvalidInput(f"input {inp.name!r} is given twice")
            if self._check_inputs:
                self._check_tensor(spec, inp.datatype, inp.data.shape)
                if self.max_batch_size:
                    if batch is not None and inp.data.shape[0] != batch:
                        raise InvalidInput(f"inputs disagree on the batch size: {batch} and {inp.data.shape[0]}")
                    batch = inp.data.shape[0]
            seen[inp.name] = inp.data
        missing = [n for n in self._input_by_name if n not in seen]
        if missing:
            raise InvalidInput(f"model {self.name!r} needs inputs {missing} that the request lacks")
        for out in request.outputs:
            if out.name not in self._output_by_name:
                raise InvalidInput(
                    f"model {self.name!r} has no output {out.name!r}; its outputs are "
                    f"{', '.join(sorted(self._output_by_name))}"
                )
            if classification.PARAMETER in out.parameters:
                classification.class_count(out.parameters[classification.PARAMETER], self._output_by_name[out.name])
        return seen

    def _check_tensor(self, spec: TensorSpec, datatype: str, shape: tuple[int, ...]) -> None:
        where = f"input {spec.name!r}"
        if datatype != spec.datatype:
            raise InvalidInput(f"{where}: datatype {datatype} does not match the model's {spec.datatype}")
        if len(shape) != len(spec.shape) or any(d != s and s != -1 for d, s in zip(shape, spec.shape, strict=False)):
            raise InvalidInput(f"{where}: shape {list(shape)} does not match the model's {list(spec.shape)}")
        if self.max_batch_size and shape[0] > self.max_batch_size:
            raise InvalidInput(
                f"{where}: batch size {shape[0]} exceeds the model's max_batch_size {self.max_batch_size}"
            )

    def _pick_infer(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """The ``dlinfer_infer`` hook, or the runner itself when only the built-in
        implementation (which calls the runner) is registered: pluggy's dispatch cost
        a third as much as ONNX Runtime's own Python per request."""
        impls = self._hook.dlinfer_infer.get_hookimpls()
        if all(i.plugin_name == BUILTIN_INFER for i in impls):
            return self.runner.predict
        return lambda inputs: self._hook.dlinfer_infer(model=self, inputs=inputs)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pre-process, infer, post-process; runs in a worker thread."""
        for proc in self.preprocess:
            inputs = proc(inputs, self.config)
        to_model, to_client = self._reshapes
        if to_model:
            inputs = {k: self._reshaped(v, to_model.get(k)) for k, v in inputs.items()}
        outputs = self._infer(inputs)
        if to_client:
            outputs = {k: self._reshaped(v, to_client.get(k)) for k, v in outputs.items()}
        for proc in self.postprocess:
            outputs = proc(outputs, self.config)
        return outputs

    def _reshaped(self, arr: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
        """``arr`` in ``shape`` (per batch row when the model batches); as it is for ``None``."""
        if shape is None:
            return arr
        return np.reshape(arr, (arr.shape[0], *shape) if self.max_batch_size else shape)

    def refuse_if_full(self, pending: int = 0) -> None:
        """Raise :class:`Overloaded` now if the queue (with ``pending`` admitted requests) is full.

        Frontends call it before reading a request body, so a refused request
        costs no decoding; ``infer`` checks again when the request is queued.
        """
        try:
            self.scheduler.refuse_if_full(pending)
        except Overloaded:
            for o in self.scheduler.observers:
                o.finished("overloaded", 0.0)
            raise

    def hold(self) -> None:
        """Count a request in flight: :meth:`close` (unload, reload, drain) waits until it is released."""
        self.inflight += 1
        self._idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def infer(
        self, request: InferenceRequest, timeout_s: float | None = None, held: bool = False
    ) -> InferenceResponse:
        """Validate, schedule and run a request; never blocks the event loop. ``held``: the caller
        already counts it in flight (a :class:`~dlinfer.dataplane.Lease`)."""
        t0 = time.perf_counter()
        limit = timeout_s if timeout_s is not None else (self.config.timeout_ms / 1000 or None)
        deadline = time.monotonic() + limit if limit else None
        if not held:
            self.hold()
        failure: str | None = "canceled"  # stays so only if the caller goes away (client disconnect)
        try:
            inputs = self.validate(request)
            if isinstance(self.runner, EnsembleRunner):  # its steps queue at their own models
                outputs = await self.runner.run(inputs, deadline, request.parameters)
            elif isinstance(self.scheduler, SequenceBatcher):
                outputs = await self.scheduler.submit(inputs, deadline, request.parameters)
            else:
                outputs = await self.scheduler.submit(inputs, deadline)
            failure = None
        except DlinferError as exc:
            failure = _FAILURE_REASONS.get(type(exc), "other")
            raise
        except Exception as exc:
            failure = "backend"
            log.exception("model %s version %s failed", self.name, self.version)
            raise InferenceError(f"model {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if not held:
                self.release()
            for o in self.scheduler.observers:
                o.finished(failure, time.perf_counter() - t0)
        wanted = [o.name for o in request.outputs] or list(outputs)
        classes = {
            o.name: o.parameters[classification.PARAMETER]
            for o in request.outputs
            if classification.PARAMETER in o.parameters
        }
        result = []
        for name in wanted:
            arr = np.asarray(outputs[name])
            spec = self._output_by_name.get(name)
            if name in classes:
                arr = classification.top_classes(arr, classes[name], self.labels.get(name), self.max_batch_size > 0)
                result.append(InferOutput(name, "BYTES", arr.shape, arr))
                continue
            result.append(InferOutput(name, spec.datatype if spec else v2_datatype(arr.dtype), arr.shape, arr))
        return InferenceResponse(self.name, str(self.version), result, request.id)

    async def close(self) -> None:
        """Wait for in-flight requests, then free the runner."""
        await self._idle.wait()
        await self.scheduler.aclose()
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        self.scheduler.close()
        self.runner.close()


#: The ``reason`` label of failed requests in the metrics (Triton's REJECTED, CANCELED, BACKEND, ...).
_FAILURE_REASONS: dict[type[DlinferError], str] = {
    InvalidInput: "invalid",
    Overloaded: "overloaded",
    DeadlineExceeded: "deadline",
    Unavailable: "unavailable",
    InferenceError: "backend",
}


def _resolve_processors(plugins: Plugins, names: tuple[str, ...]) -> list[Any]:
    registry = plugins.registry("dlinfer_processors")
    procs = []
    for n in names:
        if n not in registry:
            raise ModelLoadError(
                f"processor {n!r} is not installed (installed: {', '.join(sorted(registry)) or 'none'})"
            )
        procs.append(registry[n].obj())
    return procs


@attrs.frozen
class Fingerprint:
    """A model's files as poll mode compares them: config.toml's and config.pbtxt's
    (size, mtime), None when absent, and, per version folder, every file's (path, size, mtime)."""

    config: tuple[tuple[int, int] | None, ...]
    versions: dict[int, tuple[Any, ...]]


#: ``_load``'s "leave the model's load override as it is" (poll-mode reloads, plain ``load``).
_KEEP = object()


class ModelRepository:
    """All models of a node: what is on disk and what is loaded."""

    def __init__(self, config: NodeConfig, plugins: Plugins) -> None:
        self.config = config
        self.plugins = plugins
        self.root = config.repository_path
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._status: dict[str, list[VersionStatus]] = {}
        #: Set when the node drains: every frontend's admit() refuses new inference requests.
        self.draining = False
        self._locks: dict[str, asyncio.Lock] = {}
        #: What each model's files looked like when last loaded (poll mode compares).
        self._fingerprints: dict[str, Fingerprint] = {}
        #: Models unloaded through the control API: polling leaves them unloaded.
        self._held: set[str] = set()
        #: Configs (and files) a load request put in place of the repository's, by model.
        self._overrides: dict[str, LoadOverride] = {}
        self._poll_task: asyncio.Task[None] | None = None

    # --------------------------------------------------------------- discovery

    def names(self) -> list[str]:
        """Model folders on disk (hidden folders and unsafe names skipped)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and NAME_RE.match(p.name)
        )

    def model_dir(self, name: str) -> Path:
        check_name(name)
        override = self._overrides.get(name)
        if override is not None and override.folder is not None:
            return override.folder
        path = self.root / name
        if not path.is_dir():
            raise ModelNotFound(f"model {name!r} is not in the repository")
        return safe_child(self.root, self.root, name)

    def read_config(self, name: str) -> ModelConfig:
        override = self._overrides.get(name)
        mdir = self.model_dir(name)
        cfg_path, triton_path = mdir / "config.toml", mdir / TRITON_CONFIG
        for p in (cfg_path, triton_path):
            if p.is_symlink():
                raise ModelLoadError(f"{name}/{p.name}: symlinks are not followed in the repository")
        if override is not None:
            cfg, cfg_path = override.config, Path(f"<load request for {name}>")
        elif triton_path.exists():
            if cfg_path.exists():
                raise ModelLoadError(
                    f"{name}: has both config.toml and {TRITON_CONFIG}; remove one (they could disagree)"
                )
            cfg, cfg_path = read_triton_config(triton_path, name), triton_path
        else:
            cfg = model_config_from_dict(read_toml(cfg_path) if cfg_path.exists() else {}, cfg_path)
        if cfg.name and cfg.name != name:
            raise ModelLoadError(f"{cfg_path}: name {cfg.name!r} does not match folder {name!r}")
        if cfg.allow_pickle and not self.config.repository.allow_pickle:
            raise ModelLoadError(
                f"{cfg_path}: allow_pickle is set, but the node does not allow unpickling; "
                f"set repository.allow_pickle = true in {Path(self.config.source).name} to trust this repository"
            )
        return attrs.evolve(cfg, name=name)

    def client_text(self, text: str) -> str:
        """``text`` as clients may see it: a path in the repository relative to it
        (``resnet/1/model.onnx``), never where the repository is on the server.

        Loaders and frameworks name files by their absolute path; the index, load and
        inference errors pass through here. The server's own log keeps the full path.
        """
        unresolved = os.path.abspath(Path(self.config.base_dir) / self.config.repository.path)
        for root in sorted({str(self.root), unresolved}, key=len, reverse=True):
            text = text.replace(root + os.sep, "").replace(root, "<repository>")
        return text

    def versions_on_disk(self, name: str) -> list[int]:
        mdir = self.model_dir(name)
        return sorted(int(p.name) for p in mdir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)

    # ------------------------------------------------------------ load/unload

    def fingerprint(self, name: str) -> Fingerprint:
        """Sizes and modification times of a model's config.toml and version folders."""
        override = self._overrides.get(name)
        mdir = override.folder if override is not None and override.folder is not None else self.root / name

        def stat(p: Path) -> tuple[int, int]:
            st = p.stat()
            return st.st_size, st.st_mtime_ns

        configs = (mdir / "config.toml", mdir / TRITON_CONFIG)
        versions: dict[int, tuple[Any, ...]] = {}
        for v in self.versions_on_disk(name):
            vdir = mdir / str(v)
            files = []
            for dirpath, _dirs, filenames in os.walk(vdir):
                for f in filenames:
                    p = Path(dirpath) / f
                    with contextlib.suppress(OSError):  # a file removed while we look
                        files.append((str(p.relative_to(vdir)), *stat(p)))
            versions[v] = tuple(sorted(files))
        return Fingerprint(tuple(stat(c) if c.is_file() else None for c in configs), versions)

    def _polled(self) -> list[str]:
        patterns = ("*",) if self.config.repository.control_mode == "none" else self.config.repository.startup_models
        return [n for n in self.names() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    async def start(self) -> None:
        """Load the startup models (all of them in control mode 'none'); in
        control mode 'poll', start watching the repository."""
        for name in self._polled():
            try:
                await self.load(name)
            except DlinferError as exc:
                log.error("model %s: %s", name, exc)
        if self.config.repository.control_mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_loop(), name="dlinfer-repository-poll")

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.repository.poll_interval_s)
            try:
                await self.poll()
            except Exception:  # one bad scan must not stop polling
                log.exception("repository poll failed")

    def _sent_models(self) -> set[str]:
        """Models served from files a load request sent: not on disk, and not for polling to unload."""
        return {name for name, override in self._overrides.items() if override.folder is not None}

    async def poll(self) -> None:
        """Apply what changed on disk since the last scan.

        A new model folder is loaded, a removed one unloaded; a model whose
        config.toml changed is reloaded; new version folders load and removed
        ones unload, as the version policy selects. Versions that did not change
        keep serving, and replaced versions finish their in-flight requests first.
        """
        on_disk = set(self._polled())
        for name in sorted(on_disk - self._held):
            try:
                current = await asyncio.to_thread(self.fingerprint, name)
            except (OSError, DlinferError):
                continue  # removed or unreadable mid-scan: the next scan decides
            if current == self._fingerprints.get(name):
                continue
            log.info("model %s changed on disk; reloading", name)
            try:
                await self.load(name, keep_unchanged=True)
            except DlinferError as exc:
                log.error("model %s: %s", name, exc)
        for name in sorted(set(self._fingerprints) - on_disk - self._sent_models()):
            log.info("model %s left the repository; unloading", name)
            with contextlib.suppress(ModelNotFound):
                await self.unload(name)
            self._held.discard(name)  # a folder that comes back is loaded again
            self._fingerprints.pop(name, None)
            self._status.pop(name, None)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str, keep_unchanged: bool = False) -> list[VersionStatus]:
        """(Re)load a model's selected versions; old versions drain, then close.

        With ``keep_unchanged`` (poll mode) versions whose files and config did
        not change keep serving as they are, and a reload that loads nothing
        leaves the old versions serving. Raises :class:`ModelLoadError` if no
        version could be loaded; the index keeps the per-version reasons either way.
        """
        return await self._load(name, keep_unchanged, _KEEP)

    async def _load(
        self, name: str, keep_unchanged: bool, override: LoadOverride | object | None
    ) -> list[VersionStatus]:
        """:meth:`load`; ``override`` (unless ``_KEEP``) replaces the model's load override under the
        model's lock, so a concurrent load or unload cannot pair one request's config with another's files."""
        check_name(name)
        self._held.discard(name)
        previous: LoadOverride | None = None
        async with self._lock(name):
            if override is not _KEEP:
                previous = self._overrides.pop(name, None)
                if isinstance(override, LoadOverride):
                    self._overrides[name] = override
            try:
                loaded, statuses = await self._load_locked(name, keep_unchanged)
            finally:
                if previous is not None and previous is not override:
                    previous.discard()
        if not loaded:
            reasons = "; ".join(f"version {s.version}: {s.reason}" if s.version else s.reason for s in statuses)
            raise ModelLoadError(f"model {name!r} failed to load: {reasons}")
        return statuses

    async def _load_locked(self, name: str, keep_unchanged: bool) -> tuple[dict[int, ServedModel], list[VersionStatus]]:
        old = self._models.get(name, {})
        if not old:
            self._status[name] = [VersionStatus(name, None, LOADING)]
        keep = (old, self._fingerprints.get(name)) if keep_unchanged else None
        loaded, statuses, fingerprint = await asyncio.to_thread(self._load_sync, name, keep)
        self._fingerprints[name] = fingerprint
        if not loaded and keep_unchanged and old:
            log.error("model %s: reload failed, the loaded versions keep serving", name)
            self._status[name] = [VersionStatus(name, v, READY) for v in old] + statuses
            loaded = old
        else:
            # Announced before they take traffic, so metrics and other observers see every request.
            for v, m in loaded.items():
                if old.get(v) is not m:
                    self.plugins.hook.dlinfer_model_loaded(model=m)
            self._models[name] = loaded
            self._status[name] = statuses
        for v, m in old.items():
            if loaded.get(v) is not m:
                await m.close()
                if v not in loaded:  # a version replaced under the same number is still served
                    self.plugins.hook.dlinfer_model_unloaded(name=name, version=v)
        return loaded, statuses

    def _load_sync(
        self, name: str, keep: tuple[dict[int, ServedModel], Fingerprint | None] | None = None
    ) -> tuple[dict[int, ServedModel], list[VersionStatus], Fingerprint]:
        """Load in a worker thread; every failure becomes a status with a reason.

        ``keep`` is the loaded versions and their fingerprint: a version whose
        files and config are unchanged is reused instead of loaded again.
        """
        try:
            fingerprint = self.fingerprint(name)
        except (OSError, DlinferError):
            fingerprint = Fingerprint((), {})
        loaded, statuses = self._load_versions(name, fingerprint, keep)
        return loaded, statuses, fingerprint

    def _load_versions(
        self, name: str, fingerprint: Fingerprint, keep: tuple[dict[int, ServedModel], Fingerprint | None] | None
    ) -> tuple[dict[int, ServedModel], list[VersionStatus]]:
        try:
            cfg = self.read_config(name)
            on_disk = self.versions_on_disk(name)
            if not on_disk:
                raise ModelLoadError(f"model {name!r} has no version folders (e.g. {name}/1/)")
            selected = cfg.version_policy.select(on_disk)
            if not selected:
                raise ModelLoadError(f"version policy selects none of the versions on disk {on_disk}")
        except DlinferError as exc:
            return {}, [VersionStatus(name, None, UNAVAILABLE, self.client_text(str(exc)))]
        loaded: dict[int, ServedModel] = {}
        statuses = []
        old, old_fp = keep or ({}, None)
        for v in selected:
            reuse = old.get(v)
            same_files = old_fp is not None and old_fp.versions.get(v) == fingerprint.versions.get(v, ())
            if reuse is not None and same_files and reuse.config == cfg:
                loaded[v] = reuse
                statuses.append(VersionStatus(name, v, READY))
                continue
            try:
                loaded[v] = self._load_version(name, v, cfg)
                statuses.append(VersionStatus(name, v, READY))
                log.info("model %s version %d ready", name, v)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, DlinferError) else f"{type(exc).__name__}: {exc}"
                log.error("model %s version %d failed to load: %s", name, v, reason)
                statuses.append(VersionStatus(name, v, UNAVAILABLE, self.client_text(reason)))
        return loaded, statuses

    def _load_version(self, name: str, version: int, cfg: ModelConfig) -> ServedModel:
        mdir = self.model_dir(name)
        override = self._overrides.get(name)
        # Files sent with a load live in a private folder: links must stay inside it instead.
        root = override.folder.parent if override is not None and override.folder is not None else self.root
        path = safe_child(root, mdir, str(version))
        check_tree(root, path)
        labels = read_labels(cfg, mdir)
        if cfg.format == ENSEMBLE or (cfg.ensemble is not None and not cfg.format):
            return self._load_ensemble(name, version, cfg)
        if cfg.ensemble is not None:
            raise ModelLoadError(f"[ensemble] is set but format is {cfg.format!r}; ensembles need format = 'ensemble'")
        runner = self.plugins.hook.dlinfer_load_model(config=cfg, path=path, node_config=self.config)
        result = optimize_runner(runner, cfg, path, self.plugins)
        runner = result.runner
        platform = getattr(runner, "platform", "")
        try:
            warm_up(runner, cfg, mdir, f"model {name} version {version}")
            optimized = [{**step, "reason": self.client_text(step["reason"])} for step in result.report()]
            return ServedModel(name, version, cfg, runner, self.plugins, platform, optimized=optimized, labels=labels)
        except BaseException:
            runner.close()
            raise

    def _load_ensemble(self, name: str, version: int, cfg: ModelConfig) -> ServedModel:
        """An ensemble: no loader, its steps are other models reached through the data plane."""
        from .dataplane import DataPlane  # the data plane is built on this module

        def on_disk(model: str) -> bool:
            return bool(NAME_RE.match(model)) and (self.root / model).is_dir()

        self._check_ensemble_cycle(name, cfg)
        runner = EnsembleRunner(name, cfg, DataPlane(self), on_disk)
        return ServedModel(name, version, cfg, runner, self.plugins, ENSEMBLE)

    def _check_ensemble_cycle(self, name: str, cfg: ModelConfig) -> None:
        """Refuse an ensemble that reaches itself through other ensembles (A -> B -> A): every
        request would call itself until its deadline."""
        path = [name]

        def visit(config: ModelConfig) -> None:
            for step in config.ensemble.step if config.ensemble is not None else ():
                if step.model in path:
                    raise ModelLoadError(f"ensemble {name!r} calls itself: {' -> '.join([*path, step.model])}")
                try:
                    inner = self.read_config(step.model)
                except DlinferError:
                    continue  # a step model that does not load is reported by its own load
                if inner.ensemble is not None:
                    path.append(step.model)
                    visit(inner)
                    path.pop()

        visit(cfg)

    async def load_with(self, name: str, override: LoadOverride | None) -> list[VersionStatus]:
        """A load from the control API: with ``override`` its config (and files) replace the
        repository's until the next plain load; without, the repository's are used again."""
        return await self._load(name, False, override)

    async def unload(self, name: str) -> None:
        """Stop serving a model; in-flight requests finish first, then memory is freed."""
        check_name(name)
        self._held.add(name)
        async with self._lock(name):
            old = self._models.pop(name, None)
            if old is None and name not in self._status:
                raise ModelNotFound(f"model {name!r} is not loaded")
            self._status[name] = [VersionStatus(name, v, UNLOADING) for v in old or {}]
            for v, m in (old or {}).items():
                await m.close()
                self.plugins.hook.dlinfer_model_unloaded(name=name, version=v)
            self._status[name] = [VersionStatus(name, v, UNAVAILABLE, "unloaded") for v in old or {}] or [
                VersionStatus(name, None, UNAVAILABLE, "unloaded")
            ]
            override = self._overrides.pop(name, None)
            if override is not None:
                override.discard()

    async def close(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        for name in list(self._models):
            await self.unload(name)
        for override in self._overrides.values():
            override.discard()
        self._overrides.clear()

    # ----------------------------------------------------------------- lookup

    def admit(self, name: str, version: str | int | None = None) -> ServedModel:
        """The model for a new inference request, refused early and cheaply: 503 while
        the node drains, 404 for an unknown model, 429 when its queue is full. Frontends
        reach it through :meth:`dlinfer.dataplane.DataPlane.admit`, before decoding the body."""
        if self.draining:
            raise Unavailable("server is shutting down")
        model = self.get(name, version)
        model.refuse_if_full(model.scheduler.pending)
        return model

    def get(self, name: str, version: str | int | None = None) -> ServedModel:
        """The served model version (latest loaded when ``version`` is None)."""
        versions = self._models.get(name)
        if not versions:
            if name in self._status:
                reason = "; ".join(s.reason for s in self._status[name] if s.reason) or self._status[name][0].state
                raise ModelNotReady(f"model {name!r} is not ready: {reason}")
            raise ModelNotFound(f"unknown model {name!r}")
        if version in (None, ""):
            return versions[max(versions)]
        try:
            v = int(version)
        except ValueError:
            raise ModelNotFound(f"invalid version {version!r} of model {name!r}") from None
        if v not in versions:
            raise ModelNotFound(
                f"model {name!r} has no version {v} loaded (loaded: {', '.join(map(str, sorted(versions)))})"
            )
        return versions[v]

    def statistics(self, name: str = "", version: str | None = None) -> list[dict[str, Any]]:
        """The statistics extension's objects: every loaded version, or those of ``name``
        (all its loaded versions, or ``version``); an unknown model is :class:`ModelNotFound`."""
        if not name:
            models = self.loaded()
        elif version:
            models = [self.get(name, version)]
        else:
            self.get(name)  # unknown or unavailable: the usual error
            models = [m for m in self.loaded() if m.name == name]
        return [m.stats.to_json(m.name, str(m.version)) for m in sorted(models, key=lambda m: (m.name, m.version))]

    def loaded(self) -> list[ServedModel]:
        return [m for vs in self._models.values() for m in vs.values()]

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """The repository index: every model on disk or known, with state and reason."""
        out: list[dict[str, Any]] = []
        for name in sorted(set(self.names()) | set(self._status)):
            statuses = self._status.get(name) or [VersionStatus(name, None, UNAVAILABLE, "not loaded")]
            for s in statuses:
                if not ready_only or s.state == READY:
                    out.append(s.to_json())
        return out
