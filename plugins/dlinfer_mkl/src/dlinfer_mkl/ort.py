"""ONNX Runtime optimizers: full graph optimisation (``onnxruntime``) and int8 quantisation (``int8``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs

from dlinfer.api import OptimizeContext, Optimizer, Runner, has_onnx, onnx_file

from .precision import REDUCED_TOLERANCE

log = logging.getLogger("dlinfer.mkl")


def _plain_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or value.startswith("."):
        raise ValueError(f"{key} must be a plain file name, got {value!r}")
    return value


def ort_runner(f: Path, ctx: OptimizeContext, threads: int = 0, level: str = "all", save_as: str = "") -> Runner:
    """An ONNX Runtime session on ``f`` with dlinfer-onnx's session settings (spinning off)."""
    import onnxruntime as ort

    from dlinfer_onnx.loader import OnnxLoader, OnnxRunner

    params = {**ctx.config.parameters, "graph_optimization_level": level}
    config = attrs.evolve(ctx.config, threads=threads or ctx.threads(), parameters=params)
    options = OnnxLoader(ctx.node_config).session_options(config)
    if save_as:
        # ONNX Runtime writes the graph it optimised; loading that later skips the optimisation.
        options.optimized_model_filepath = str(ctx.path / _plain_name(save_as, "optimized_model"))
    session = ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"])
    return OnnxRunner(session)


class OnnxRuntime(Optimizer):
    """The model's ONNX form (its own, or exported by the torch/tf converters) in ONNX Runtime
    with every graph optimisation on.

    Options: ``intra_op`` (threads), ``optimized_model`` (a file name: also save the
    optimised graph into the version folder).
    """

    name = "onnxruntime"

    def applies_to(self, runner: Runner, ctx: OptimizeContext) -> bool:
        return has_onnx(ctx)

    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        return ort_runner(
            onnx_file(ctx),
            ctx,
            threads=int(ctx.options.get("intra_op", 0)),
            save_as=ctx.options.get("optimized_model", ""),
        )


def _has_conv(f: Path) -> bool:
    import onnx

    model = onnx.load(str(f), load_external_data=False)
    return any(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node)


class _Samples:
    """ONNX Runtime's CalibrationDataReader over the pipeline's samples."""

    def __init__(self, samples: list[dict[str, Any]]) -> None:
        self._it = iter(samples)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)


class Int8(Optimizer):
    """int8 quantisation with ONNX Runtime (opt-in: it changes numerics).

    Options: ``mode`` = "static" (activations too, calibrated on the samples; the
    default for convolutional models) or "dynamic" (weights only; activations
    quantised per batch at run time; the default otherwise), ``per_channel``
    (default true), ``intra_op``. The gate defaults to top-1 agreement with a loose
    tolerance; set ``[optimize_options.int8]`` atol/rtol/top1 to tighten it.
    """

    name = "int8"
    reduced_precision = True
    tolerance = REDUCED_TOLERANCE

    def applies_to(self, runner: Runner, ctx: OptimizeContext) -> bool:
        return has_onnx(ctx)

    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        src = onnx_file(ctx)
        mode = ctx.options.get("mode") or ("static" if _has_conv(src) else "dynamic")
        if mode not in ("static", "dynamic"):
            raise ValueError(f"optimize_options.int8.mode must be 'static' or 'dynamic', got {mode!r}")
        per_channel = bool(ctx.options.get("per_channel", True))
        prepared = ctx.workdir / "int8-prepared.onnx"
        try:
            quant_pre_process(str(src), str(prepared))
        except Exception as exc:  # shape inference is an aid, not a requirement
            log.info("int8: pre-processing skipped (%s: %s)", type(exc).__name__, exc)
            prepared = src
        dst = ctx.workdir / f"int8-{mode}.onnx"
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
        else:
            quantize_static(
                str(prepared),
                str(dst),
                _Samples(ctx.samples),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
            )
        return ort_runner(dst, ctx, threads=int(ctx.options.get("intra_op", 0)))
