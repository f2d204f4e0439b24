"""The ONNX form of a loaded model: its own file, or one exported by a registered converter."""

from __future__ import annotations

from pathlib import Path

from dlinfer import Runner
from dlinfer.convert import ConvertOptions, detect_format, find_converter
from dlinfer.errors import DlinferError
from dlinfer.optimize import OptimizeContext


def source_format(ctx: OptimizeContext) -> str:
    return ctx.config.format or detect_format(ctx.plugins, ctx.path)


def has_onnx(ctx: OptimizeContext) -> bool:
    """Whether an ONNX form exists or a converter can make one (no conversion is run)."""
    try:
        fmt = source_format(ctx)
        if fmt != "onnx":
            find_converter(ctx.plugins, fmt, "onnx")
    except DlinferError:
        return False
    return True


def onnx_file(runner: Runner, ctx: OptimizeContext) -> Path:
    """An ONNX file of the model as loaded; exported at most once per pipeline.

    Exports go to the pipeline's scratch folder, never into the model repository.
    """
    cached = ctx.cache.get("onnx")
    if cached is not None:
        return cached
    fmt = source_format(ctx)
    if fmt == "onnx":
        from dlinfer_onnx.loader import model_file

        f = model_file(ctx.path, ctx.config)
    else:
        converter = find_converter(ctx.plugins, fmt, "onnx")
        # The pipeline's gate compares against the loaded model itself; no second check here.
        options = ConvertOptions(model_config=ctx.config, validate=False)
        f = converter.convert(ctx.path, ctx.workdir / "model.onnx", options).output
    ctx.cache["onnx"] = f
    return f
