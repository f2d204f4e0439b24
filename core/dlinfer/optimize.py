"""The optimizer pipeline: a model config's ``optimize = [...]`` applied after loading.

Optimizers come from the ``dlinfer_optimizers`` hook. Each step turns the current
:class:`Runner` into a new one (a frozen TorchScript module, an ONNX Runtime or
OpenVINO session, ...). Every step is run on the same sample inputs as the model
as loaded and compared with :func:`dlinfer.numerics.compare_outputs`; a step that
fails, errors or changes the model's tensors is rejected with a logged reason and
the runner before it is kept. Comparing against the original (not the step
before) means small errors cannot add up along a long pipeline.
"""

from __future__ import annotations

import abc
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import numpy as np

from .datatypes import numpy_dtype
from .errors import ConfigError, ModelLoadError
from .model import ModelConfig, OptimizeTolerance, Runner, TensorSpec, intra_op_threads
from .numerics import Comparison, compare_outputs

if TYPE_CHECKING:
    from .config import NodeConfig
    from .plugins import Plugins

log = logging.getLogger("dlinfer.optimize")

#: Generated samples: how many batches, and the batch size for a dynamic batch dimension.
SAMPLE_COUNT = 3
SAMPLE_BATCH = 2
#: Keys of ``[optimize_options.<name>]`` that set the gate rather than the optimizer.
TOLERANCE_KEYS = ("atol", "rtol", "top1", "elementwise")


@attrs.define
class OptimizeContext:
    """What an optimizer may use besides the runner: the model, its files, the samples."""

    config: ModelConfig
    #: The version folder the model was loaded from (read-only for optimizers).
    path: Path
    node_config: NodeConfig
    plugins: Plugins
    #: Sample input batches (the gate's inputs; also calibration data for int8).
    samples: list[dict[str, np.ndarray]]
    #: A scratch folder removed after the pipeline (exported ONNX files and the like).
    workdir: Path
    #: This step's ``[optimize_options.<name>]`` table, gate keys removed.
    options: dict[str, Any] = attrs.field(factory=dict)
    #: Shared between the steps of one pipeline (e.g. the ONNX file exported once).
    cache: dict[str, Any] = attrs.field(factory=dict)

    def threads(self) -> int:
        """Intra-op threads per instance for a new session, by the rule loaders use
        (:func:`dlinfer.model.intra_op_threads`)."""
        return intra_op_threads(self.config, self.node_config)


class Optimizer(abc.ABC):
    """A transformation of a loaded model that keeps its inputs and outputs.

    Classes are returned from the ``dlinfer_optimizers`` hook and instantiated
    once per pipeline step.
    """

    #: Unique name that model configs use in ``optimize = [...]``.
    name: ClassVar[str]
    #: Changes numerics on purpose (bf16, int8): ``dlinfer-core optimize`` tries it only
    #: when asked, and the gate uses :attr:`tolerance` instead of the f32 default.
    reduced_precision: ClassVar[bool] = False
    #: The gate for this step when config gives no ``[optimize_options.<name>]`` override;
    #: None: the model's ``[optimize_tolerance]``.
    tolerance: ClassVar[OptimizeTolerance | None] = None
    #: Optimizers whose result this one refines (e.g. bf16 recompiling an OpenVINO model):
    #: ``dlinfer-core optimize`` also tries ``[other, this]`` for each.
    refines: ClassVar[tuple[str, ...]] = ()
    #: Whether ``dlinfer-core optimize`` tries it as a variant (settings such as threads do not).
    autotune: ClassVar[bool] = True

    def applies_to(self, runner: Runner, ctx: OptimizeContext) -> bool:
        """Whether this optimizer can transform ``runner`` (cheap; no side effects)."""
        return True

    @abc.abstractmethod
    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        """Return the optimized runner (or ``runner`` itself when it changed in place).

        The pipeline closes ``runner`` once the result is accepted, so the result
        must hold its own references to anything of ``runner`` it keeps using.
        Raise any exception to have the step rejected with that reason.
        """


@attrs.frozen
class StepReport:
    """What happened to one pipeline step."""

    name: str
    accepted: bool
    reason: str = ""
    comparison: Comparison | None = None


@attrs.define
class PipelineResult:
    runner: Runner
    steps: list[StepReport]

    @property
    def applied(self) -> list[str]:
        return [s.name for s in self.steps if s.accepted]

    def report(self) -> list[dict[str, Any]]:
        """The steps as JSON: which optimizers were applied, and why the others were refused."""
        return [{"optimizer": s.name, "applied": s.accepted, "reason": s.reason} for s in self.steps]


# ------------------------------------------------------------------ samples


def generate_samples(inputs: Sequence[TensorSpec], count: int = SAMPLE_COUNT, seed: int = 0) -> list[dict]:
    """Random input batches shaped by the specs (dynamic dims: batch 2, others 1).

    Floats are standard normal, integers small non-negative (valid indices for an
    embedding table of any size), booleans random. BYTES cannot be invented: such
    models need ``optimize_samples``.
    """
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        batch: dict[str, np.ndarray] = {}
        for spec in inputs:
            if spec.datatype == "BYTES":
                raise ModelLoadError(
                    f"input {spec.name!r} is BYTES: random samples cannot be generated for it; "
                    "put sample inputs (*.npz) in a folder and name it in optimize_samples"
                )
            shape = [SAMPLE_BATCH if (d == -1 and i == 0) else (1 if d == -1 else d) for i, d in enumerate(spec.shape)]
            dtype = numpy_dtype(spec.datatype)
            if dtype.kind == "f":
                arr = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                arr = rng.integers(0, 2, shape).astype(bool)
            else:
                arr = rng.integers(0, 2, shape).astype(dtype)
            batch[spec.name] = arr
        batches.append(batch)
    return batches


def read_samples(folder: Path, inputs: Sequence[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Sample batches from ``*.npz`` files (one batch each, arrays named like the inputs)."""
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise ModelLoadError(f"optimize_samples folder {folder.name!r} has no *.npz files")
    names = [t.name for t in inputs]
    batches = []
    for f in files:
        with np.load(f, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise ModelLoadError(f"sample {f.name} lacks inputs {missing} (it has {data.files})")
            batches.append({n: data[n] for n in names})
    return batches


def model_samples(runner: Runner, config: ModelConfig, model_dir: Path) -> list[dict[str, np.ndarray]]:
    """The samples the gate runs: ``optimize_samples`` when set, else generated."""
    if not config.optimize_samples:
        return generate_samples(runner.inputs)
    folder = (model_dir / config.optimize_samples).resolve()
    if not folder.is_relative_to(model_dir.resolve()) or not folder.is_dir():
        raise ModelLoadError(f"optimize_samples {config.optimize_samples!r} is not a folder inside the model's folder")
    return read_samples(folder, runner.inputs)


# --------------------------------------------------------------------- gate


def step_tolerance(config: ModelConfig, optimizer: Optimizer) -> OptimizeTolerance:
    """The gate for one step: config overrides, else the optimizer's own, else the model's."""
    base = optimizer.tolerance or config.optimize_tolerance
    table = config.optimize_options.get(optimizer.name, {})
    changes = {k: table[k] for k in TOLERANCE_KEYS if k in table}
    try:
        return attrs.evolve(base, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimize_options.{optimizer.name}: {exc}") from None


def top1_agrees(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> bool:
    """Same arg-max along the last axis for every float output with more than one class."""
    for (_, e), a in zip(expected.items(), actual.values(), strict=True):
        e, a = np.asarray(e), np.asarray(a)
        if e.dtype.kind == "f" and e.ndim >= 1 and e.shape[-1] > 1:
            if not np.array_equal(e.argmax(-1), a.argmax(-1)):
                return False
    return True


def check(
    reference: list[dict[str, np.ndarray]],
    runner: Runner,
    samples: list[dict[str, np.ndarray]],
    tolerance: OptimizeTolerance,
) -> Comparison:
    """Run ``runner`` on the samples and compare with the reference outputs (worst case over samples).

    ``max_rel_error`` is against each output's scale unless ``tolerance.elementwise``
    (see :class:`~dlinfer.model.OptimizeTolerance`).
    """
    max_abs = max_rel = 0.0
    worst = ""
    ok = True
    for sample, expected in zip(samples, reference, strict=True):
        actual = runner.predict(sample)
        if tolerance.elementwise:
            comparisons = [compare_outputs(expected, actual, atol=tolerance.atol, rtol=tolerance.rtol)]
        else:
            comparisons = _scaled(expected, actual, tolerance)
        ok &= all(c.ok for c in comparisons) and (not tolerance.top1 or top1_agrees(expected, actual))
        for c in comparisons:
            if c.max_abs_error >= max_abs:
                worst = c.worst_output
            max_abs = max(max_abs, c.max_abs_error)
            max_rel = max(max_rel, c.max_rel_error)
    return Comparison(max_abs, max_rel, worst, ok)


def _scaled(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], tol: OptimizeTolerance) -> list:
    """One comparison per output with ``|a - e| <= atol + rtol * max|e|``; rel error against ``max|e|``."""
    if len(expected) != len(actual):
        raise ValueError(f"outputs differ: expected {sorted(expected)}, got {sorted(actual)}")
    by_name = set(expected) == set(actual)
    out = []
    for i, (name, e) in enumerate(expected.items()):
        a = actual[name] if by_name else list(actual.values())[i]
        e = np.asarray(e)
        scale = float(np.abs(e).max()) if e.size and e.dtype.kind in "fiub" else 0.0
        c = compare_outputs({name: e}, {name: a}, atol=tol.atol + tol.rtol * scale, rtol=0.0)
        out.append(attrs.evolve(c, max_rel_error=c.max_abs_error / scale if scale else c.max_abs_error))
    return out


def _same_tensors(before: Runner, after: Runner) -> str:
    """Why ``after`` cannot stand in for ``before`` (renamed or retyped tensors), or ''."""
    for kind in ("inputs", "outputs"):
        a = {t.name: t.datatype for t in getattr(before, kind)}
        b = {t.name: t.datatype for t in getattr(after, kind)}
        if a != b:
            return f"it changes the model's {kind} from {a} to {b}"
    return ""


# ----------------------------------------------------------------- pipeline


def resolve(plugins: Plugins, names: Sequence[str]) -> list[type[Optimizer]]:
    registry = plugins.registry("dlinfer_optimizers")
    missing = [n for n in names if n not in registry]
    if missing:
        raise ModelLoadError(
            f"optimizer(s) {missing} named in optimize are not installed "
            f"(installed: {', '.join(sorted(registry)) or 'none; install dlinfer-mkl'})"
        )
    return [registry[n].obj for n in names]


def run_pipeline(
    runner: Runner,
    config: ModelConfig,
    path: Path,
    plugins: Plugins,
    samples: list[dict[str, np.ndarray]] | None = None,
    reference: list[dict[str, np.ndarray]] | None = None,
) -> PipelineResult:
    """Apply ``config.optimize`` to ``runner``; every step is validated, failures keep the previous runner.

    Replaced runners are closed. On an exception (an unknown optimizer, unusable
    samples) the caller still owns ``runner``.
    """
    classes = resolve(plugins, config.optimize)
    if samples is None:
        samples = model_samples(runner, config, path.parent)
    if reference is None:
        reference = [runner.predict(s) for s in samples]
    label = f"model {config.name}"
    steps: list[StepReport] = []
    current = runner
    workdir = Path(tempfile.mkdtemp(prefix="dlinfer-optimize-"))
    cache: dict[str, Any] = {}
    try:
        for cls in classes:
            opt = cls()
            table = {k: v for k, v in config.optimize_options.get(opt.name, {}).items() if k not in TOLERANCE_KEYS}
            ctx = OptimizeContext(config, path, plugins.config, plugins, samples, workdir, table, cache)
            report, current = _step(opt, current, ctx, reference, label)
            steps.append(report)
    except BaseException:
        if current is not runner:
            current.close()
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return PipelineResult(current, steps)


def _step(
    opt: Optimizer, current: Runner, ctx: OptimizeContext, reference: list[dict], label: str
) -> tuple[StepReport, Runner]:
    tolerance = step_tolerance(ctx.config, opt)
    if not opt.applies_to(current, ctx):
        reason = f"does not apply to a {getattr(current, 'platform', type(current).__name__)} model"
        log.warning("%s: optimizer %s skipped: %s", label, opt.name, reason)
        return StepReport(opt.name, False, reason), current
    try:
        candidate = opt.optimize(current, ctx)
    except Exception as exc:
        reason = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
        log.warning("%s: optimizer %s rejected: %s", label, opt.name, reason)
        return StepReport(opt.name, False, reason), current
    reason = _same_tensors(current, candidate) if candidate is not current else ""
    comparison = None
    if not reason:
        try:
            comparison = check(reference, candidate, ctx.samples, tolerance)
            if not comparison.ok:
                reason = f"numerics out of tolerance (atol {tolerance.atol:g}, rtol {tolerance.rtol:g}"
                reason += ", top-1 agreement)" if tolerance.top1 else ")"
                reason += f": {comparison.describe()}"
        except Exception as exc:
            reason = f"the optimized model failed on the samples: {type(exc).__name__}: {exc}"
    if reason:
        log.warning("%s: optimizer %s rejected, keeping the model before it: %s", label, opt.name, reason)
        if candidate is not current:
            candidate.close()
        return StepReport(opt.name, False, reason, comparison), current
    assert comparison is not None
    log.info("%s: optimizer %s applied: %s", label, opt.name, comparison.describe())
    if candidate is not current:
        current.close()
    return StepReport(opt.name, True, "", comparison), candidate


def optimize_runner(runner: Runner, config: ModelConfig, path: Path, plugins: Plugins) -> PipelineResult:
    """The repository's entry: the optimized runner with what each step did (no steps when
    ``optimize`` is empty).

    On an error that stops the load (e.g. an optimizer that is not installed)
    ``runner`` is closed before the error propagates.
    """
    if not config.optimize:
        return PipelineResult(runner, [])
    try:
        return run_pipeline(runner, config, path, plugins)
    except BaseException:
        runner.close()
        raise


# ----------------------------------------------------------------- autotune


@attrs.frozen
class Variant:
    """One candidate pipeline as ``dlinfer-core optimize`` measured it."""

    pipeline: tuple[str, ...]
    valid: bool
    reason: str = ""
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    latency_ms: float | None = None
    throughput: float | None = None

    @property
    def label(self) -> str:
        return "+".join(self.pipeline) or "baseline"


def candidate_pipelines(
    plugins: Plugins, runner: Runner, ctx_factory: Callable[[], OptimizeContext], reduced_precision: bool
) -> list[tuple[str, ...]]:
    """The model as loaded, each full-precision optimizer that applies, and (if asked) each
    reduced-precision one alone and after each optimizer it ``refines``."""
    full: list[type[Optimizer]] = []
    reduced: list[type[Optimizer]] = []
    for entry in plugins.registry("dlinfer_optimizers").values():
        cls = entry.obj
        if not getattr(cls, "autotune", True):
            continue
        (reduced if getattr(cls, "reduced_precision", False) else full).append(cls)
    ctx = ctx_factory()
    full = [c for c in full if c().applies_to(runner, ctx)]
    out: list[tuple[str, ...]] = [(), *((c.name,) for c in full)]
    if reduced_precision:
        for r in reduced:
            if r().applies_to(runner, ctx):
                out.append((r.name,))
            out.extend((c.name, r.name) for c in full if c.name in getattr(r, "refines", ()))
    return out


#: ``dlinfer-core optimize`` times the variants in this many turns each, so that load from
#: other processes on a shared machine drifts over all of them alike.
ROUNDS = 3


def time_calls(runner: Runner, sample: dict[str, np.ndarray], min_runs: int, min_s: float) -> list[float]:
    """Seconds of back-to-back ``predict`` calls: at least ``min_runs`` and ``min_s`` in all."""
    import time

    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        runner.predict(sample)
        times.append(time.perf_counter() - t0)
    return times


def batch_of(sample: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``sample`` resized along the batch axis to ``size`` rows (repeating rows)."""
    return {k: np.resize(v, (size, *v.shape[1:])) for k, v in sample.items()}


def batches(runner: Runner) -> bool:
    """Every input of ``runner`` has a dynamic first (batch) dimension."""
    return bool(runner.inputs) and all(t.shape and t.shape[0] == -1 for t in runner.inputs)


def default_batch_sizes(config: ModelConfig) -> list[int]:
    """The batch sizes the model will see: 1 for latency, and for throughput its largest
    preferred dynamic batch, else 8; never above its ``max_batch_size``."""
    batching = config.dynamic_batching
    largest = max(batching.preferred_batch_size) if batching and batching.preferred_batch_size else 8
    if config.max_batch_size:
        largest = min(largest, config.max_batch_size)
    return sorted({1, largest})


def autotune(
    load: Callable[[], Runner],
    config: ModelConfig,
    path: Path,
    plugins: Plugins,
    pipelines: Sequence[tuple[str, ...]],
    batch_sizes: Sequence[int] = (1, 8),
    min_runs: int = 5,
    min_s: float = 1.0,
    progress: Callable[[Sequence[Any]], Any] = iter,
) -> list[Variant]:
    """Build each candidate pipeline on a freshly loaded model and gate it against the model as
    loaded; then time the valid ones, taking turns: latency at the smallest batch size,
    throughput (rows/s) at the largest, from median call times. Every valid variant is held
    in memory until the timing ends. ``progress`` wraps each loop (e.g. ``tqdm``)."""
    first = load()
    try:
        samples = model_samples(first, config, path.parent)
        reference = [first.predict(s) for s in samples]
        batching = batches(first)
    finally:
        first.close()
    if batching:
        feeds = {b: batch_of(samples[0], b) for b in sorted({min(batch_sizes), max(batch_sizes)})}
    else:
        feeds = {next(iter(samples[0].values())).shape[0] if samples[0] else 1: samples[0]}
    built: list[tuple[tuple[str, ...], PipelineResult]] = []
    variants: dict[tuple[str, ...], Variant] = {}
    try:
        for pipeline in progress(pipelines):
            runner = load()
            try:
                candidate = attrs.evolve(config, optimize=pipeline)
                result = run_pipeline(runner, candidate, path, plugins, samples, reference)
            except BaseException:
                runner.close()
                raise
            rejected = [s for s in result.steps if not s.accepted]
            if rejected:
                variants[pipeline] = Variant(pipeline, False, "; ".join(f"{s.name}: {s.reason}" for s in rejected))
                result.runner.close()
            else:
                built.append((pipeline, result))
                for feed in feeds.values():
                    result.runner.predict(feed)  # warm-up (lazy initialisation, JIT profiling)
        times: dict[tuple[tuple[str, ...], int], list[float]] = {}
        turns = [(p, r, b) for _ in range(ROUNDS) for p, r in built for b in feeds]
        for pipeline, result, b in progress(turns):
            calls = time_calls(result.runner, feeds[b], max(1, min_runs // ROUNDS), min_s / ROUNDS)
            times.setdefault((pipeline, b), []).extend(calls)
        small, large = min(feeds), max(feeds)
        for pipeline, result in built:
            last = result.steps[-1].comparison if result.steps else None
            errors = {"max_abs_error": last.max_abs_error, "max_rel_error": last.max_rel_error} if last else {}
            latency = float(np.median(times[(pipeline, small)]))
            per_batch = float(np.median(times[(pipeline, large)]))
            variants[pipeline] = Variant(
                pipeline, True, "", latency_ms=latency * 1e3, throughput=large / per_batch, **errors
            )
    finally:
        for _, result in built:
            result.runner.close()
    return [variants[p] for p in pipelines]


#: What ``dlinfer-core optimize --prefer`` ranks variants by.
PREFERENCES = ("balanced", "latency", "throughput")


def best_variant(variants: Sequence[Variant], prefer: str = "balanced") -> Variant:
    """The validated variant to serve (the model as loaded always validates).

    ``balanced`` ranks by throughput at the largest batch divided by latency at the
    smallest, i.e. the geometric mean of both speed-ups, so a variant much faster at
    batch 1 is not lost to one slightly faster at batch 8; ``latency`` and
    ``throughput`` rank by one of them.
    """
    if prefer not in PREFERENCES:
        raise ValueError(f"prefer must be one of {', '.join(PREFERENCES)}, got {prefer!r}")
    valid = [v for v in variants if v.valid and v.throughput and v.latency_ms]
    if prefer == "latency":
        return min(valid, key=lambda v: (v.latency_ms, -(v.throughput or 0)))
    if prefer == "throughput":
        return max(valid, key=lambda v: (v.throughput, -(v.latency_ms or 0)))
    return max(valid, key=lambda v: (v.throughput or 0) / (v.latency_ms or 1))


def record_pipeline(config_path: Path, pipeline: Sequence[str]) -> None:
    """Write ``optimize = [...]`` into a model's config.toml.

    The file is edited, not regenerated: an operator's comments, key order and other keys
    stay as they were (tomlkit keeps the document's layout).
    """
    import tomlkit

    doc = tomlkit.parse(config_path.read_text()) if config_path.exists() else tomlkit.document()
    doc["optimize"] = list(pipeline)
    config_path.write_text(tomlkit.dumps(doc))
