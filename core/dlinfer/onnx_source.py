"""The ONNX form of a loaded model, for optimizers that start from ONNX
(ONNX Runtime, OpenVINO, TensorRT): the model's own file, or one exported by
the registered converter for its format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .convert import ConvertOptions, detect_format, find_converter
from .errors import DlinferError, ModelLoadError
from .optimize import OptimizeContext


def source_format(ctx: OptimizeContext) -> str:
    return ctx.config.format or detect_format(ctx.plugins, ctx.path)


def has_onnx(ctx: OptimizeContext) -> bool:
    """Whether an ONNX form exists or a converter can make one (nothing is converted)."""
    try:
        fmt = source_format(ctx)
        if fmt != "onnx":
            find_converter(ctx.plugins, fmt, "onnx")
    except DlinferError:
        return False
    return True


def onnx_file(ctx: OptimizeContext) -> Path:
    """An ONNX file of the model; exported at most once per pipeline, into the
    pipeline's scratch folder, never into the model repository."""
    cached = ctx.cache.get("onnx")
    if cached is not None:
        return cached
    fmt = source_format(ctx)
    if fmt == "onnx":
        name = ctx.config.parameters.get("filename", "model.onnx")
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ModelLoadError(f"parameters.filename must be a plain file name, got {name!r}")
        f = ctx.path / name
        if not f.is_file():
            raise ModelLoadError(f"version folder {ctx.path.name!r} has no {name}")
    else:
        converter = find_converter(ctx.plugins, fmt, "onnx")
        # The pipeline's gate compares against the loaded model itself; no second check here.
        options = ConvertOptions(model_config=ctx.config, validate=False)
        f = converter.convert(ctx.path, ctx.workdir / "model.onnx", options).output
    ctx.cache["onnx"] = f
    return f


#: Domains of the ONNX standard operator sets.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def custom_ops(model: Any, standard: frozenset[str] = STANDARD_DOMAINS) -> list[tuple[str, str]]:
    """``(domain, op_type)`` of every node of an ``onnx.ModelProto`` outside ``standard``,
    in the main graph and in subgraphs (If/Loop/Scan bodies)."""
    found: set[tuple[str, str]] = set()

    def walk(graph: Any) -> None:
        for node in graph.node:
            if node.domain not in standard:
                found.add((node.domain, node.op_type))
            for attr in node.attribute:
                if attr.g and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return sorted(found)
