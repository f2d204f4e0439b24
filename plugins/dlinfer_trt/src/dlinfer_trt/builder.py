"""ONNX -> TensorRT engine, with precision, workspace, optimisation profile and progress."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs

from dlinfer.api import ModelLoadError

from .profiles import Profile

log = logging.getLogger("dlinfer.trt")

PRECISIONS = ("fp32", "fp16", "int8")


@attrs.frozen
class BuildOptions:
    """What ``optimize_options.trt`` (or ``parameters``) asks of the builder."""

    precision: str = attrs.field(default="fp32", validator=attrs.validators.in_(PRECISIONS))
    workspace_mb: int = 1024
    #: Build a strongly typed network: precisions come from the ONNX graph's own types.
    strongly_typed: bool = False
    profile: Profile | None = None
    #: Calibration batches for int8 (dicts of input name -> array) and the cache file.
    calibration: list[dict] = attrs.field(factory=list)
    calibration_cache: Path | None = None


def _progress_monitor(trt: Any) -> Any:
    """A TensorRT IProgressMonitor drawing tqdm bars for the builder's phases."""
    from tqdm import tqdm

    class TqdmMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = 0 if parent_phase is None else 1
            self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth, leave=depth == 0)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmMonitor()


def build_engine(onnx_path: Path, options: BuildOptions) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine; parser errors name the node."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if options.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weight files next to the model.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)
    if not options.strongly_typed:
        if options.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":
            if not options.calibration:
                raise ModelLoadError("int8 needs calibration samples (optimize_options.trt.calibration_samples)")
            from .calibration import make_calibrator

            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = make_calibrator(
                options.calibration, options.calibration_cache or Path("calibration.cache")
            )
    if options.profile is not None:
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in options.profile.shapes.items():
            profile.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(profile)
        if options.precision == "int8":
            config.set_calibration_profile(profile)
    log.info("building TensorRT %s engine for %s (this takes a while)", options.precision, onnx_path.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"TensorRT failed to build an engine for {onnx_path.name}; see the log above")
    return bytes(serialized)
