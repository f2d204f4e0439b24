"""The ``trt`` optimizer and the ``tensorrt_plan`` loader."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs

from dlinfer.api import Loader, ModelConfig, ModelLoadError, OptimizeContext, Optimizer, Runner, build, one_of

from . import availability
from .builder import BuildOptions, build_engine
from .cache import EngineCache, EngineKey, decide, file_sha256, portability_problem
from .profiles import Profile, batch_profile

log = logging.getLogger("dlinfer.trt")

CACHE_FOLDER = ".dlinfer-trt"


@attrs.frozen
class TrtOptions:
    """``[optimize_options.trt]`` of a model's config.toml."""

    precision: str = attrs.field(default="fp32", validator=one_of("fp32", "fp16", "int8"))
    workspace_mb: int = 1024
    strongly_typed: bool = False
    #: Folder (inside the model's folder) of *.npz/*.npy samples for int8 calibration.
    calibration_samples: str = "calibration"
    #: Rebuild when the cached engine was built for another GPU/TensorRT/model; false: refuse.
    rebuild_engine: bool = True
    #: Refuse the model instead of serving it without TensorRT when no GPU is usable.
    require_gpu: bool = False


def parse_options(table: dict[str, Any], config: ModelConfig) -> TrtOptions:
    """``[optimize_options.trt]``, validated like every other config table."""
    return build(TrtOptions, table, f"{config.name}/config.toml", "optimize_options.trt")


def model_profile(runner: Runner, ctx: OptimizeContext) -> Profile:
    first_dynamic = all(t.shape and t.shape[0] == -1 for t in runner.inputs)
    mbs = ctx.config.max_batch_size
    if mbs is None:
        mbs = ctx.node_config.limits.max_batch_size if first_dynamic else 0
    return batch_profile(runner.inputs, ctx.config, mbs)


class TrtOptimizer(Optimizer):
    """ONNX (the model's own or exported) -> TensorRT engine, cached per GPU."""

    name = "trt"

    def applies_to(self, runner: Runner, ctx: OptimizeContext) -> bool:
        options = parse_options(ctx.options, ctx.config)
        gpu, reason = availability.status()
        if gpu is None:
            if options.require_gpu:
                raise ModelLoadError(f"TensorRT is required (require_gpu = true) but unavailable: {reason}")
            log.warning("model %s: TensorRT unavailable (%s); serving it as loaded", ctx.config.name, reason)
            return False
        from dlinfer.api import has_onnx

        return has_onnx(ctx)

    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        import onnx

        from dlinfer.api import onnx_file

        from .calibration import calibration_batches, read_calibration_rows
        from .customops import register_plugins, require_plugins
        from .runner import TrtRunner

        options = parse_options(ctx.options, ctx.config)
        gpu, _ = availability.status()
        assert gpu is not None
        onnx_path = onnx_file(ctx)
        op_plugins = register_plugins(e.obj for e in ctx.plugins.registry("dlinfer_trt_plugins").values())
        require_plugins(onnx.load(str(onnx_path), load_external_data=False), op_plugins)
        profile = model_profile(runner, ctx)
        key = EngineKey(file_sha256(onnx_path), gpu, options.precision, profile.key(), tuple(sorted(op_plugins)))
        cache = EngineCache(ctx.path.parent / CACHE_FOLDER / ctx.path.name)
        if decide(cache.lookup(key), key, options.rebuild_engine) == "use":
            log.info("model %s: using cached TensorRT engine %s", ctx.config.name, cache.paths(key)[0].name)
            return TrtRunner(cache.load(key))
        calibration: list[dict] = []
        if options.precision == "int8":
            rows = read_calibration_rows(ctx.path.parent / options.calibration_samples, runner.inputs)
            _, opt_shape, _ = next(iter(profile.shapes.values()))
            calibration = list(calibration_batches(rows, opt_shape[0] if opt_shape else 1))
        engine = build_engine(
            onnx_path,
            BuildOptions(
                options.precision,
                options.workspace_mb,
                options.strongly_typed,
                profile,
                calibration,
                cache.folder / f"calibration-{key.model_sha256[:12]}.cache",
            ),
        )
        cache.store(key, engine)
        return TrtRunner(engine)


class PlanLoader(Loader):
    """A prebuilt engine ``model.plan`` with dlinfer's record ``model.json`` beside it."""

    name = "tensorrt"
    formats = ("tensorrt_plan",)

    @classmethod
    def detect(cls, path: Path) -> str | None:
        return "tensorrt_plan" if (path / "model.plan").is_file() else None

    def load(self, config: ModelConfig, path: Path) -> Runner:
        gpu, reason = availability.status()
        if gpu is None:
            raise ModelLoadError(f"model.plan is a TensorRT engine, and TensorRT is unavailable here: {reason}")
        record = path / "model.json"
        if record.is_file():
            import json

            built = EngineKey.from_json(json.loads(record.read_text()))
            problem = portability_problem(built.gpu, gpu)
            if problem:
                raise ModelLoadError(f'model.plan: {problem}; rebuild it from ONNX with optimize = ["trt"]')
        from .runner import TrtRunner

        return TrtRunner((path / "model.plan").read_bytes())
