"""Opt-in reduced precision: ``bf16`` (OpenVINO's bf16 inference or torch autocast)."""

from __future__ import annotations

from dlinfer.api import OptimizeContext, Optimizer, OptimizeTolerance, Runner

#: The gate for bf16/int8 unless ``[optimize_options.<name>]`` says otherwise: the same
#: top-1 class for every sample row, and every output within 5% of its scale (bf16 keeps
#: 8 bits of mantissa, about 2-3 significant digits per operation).
REDUCED_TOLERANCE = OptimizeTolerance(atol=1e-3, rtol=0.05, top1=True)


class Bf16(Optimizer):
    """bfloat16 math where the CPU has it (AVX512-BF16, AMX).

    After ``openvino``: the same model recompiled with INFERENCE_PRECISION_HINT bf16.
    On an eager or exported torch model: ``torch.autocast`` to bf16. Otherwise (ONNX,
    TorchScript, TF with an ONNX exporter): the ONNX form in OpenVINO at bf16.
    """

    name = "bf16"
    reduced_precision = True
    tolerance = REDUCED_TOLERANCE
    refines = ("openvino",)

    def applies_to(self, runner: Runner, ctx: OptimizeContext) -> bool:
        from dlinfer.api import has_onnx

        from .ov import OpenVinoRunner
        from .torchscript import autocast_applies

        return isinstance(runner, OpenVinoRunner) or autocast_applies(runner) or has_onnx(ctx)

    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        from dlinfer.api import onnx_file

        from .ov import OpenVinoRunner, compile_onnx
        from .torchscript import autocast_applies, autocast_runner

        if isinstance(runner, OpenVinoRunner):
            return runner.recompiled(precision="bf16")
        if autocast_applies(runner):
            return autocast_runner(runner)
        return compile_onnx(onnx_file(ctx), runner, ctx, "bf16")
