"""Torch -> ONNX export, validated against torch: the ``torch-onnx`` converter and :func:`export_onnx`.

Uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which
needs no onnxscript and supports opsets 9 to 17. The result is checked by running
torch and ONNX Runtime on the same random inputs (at a batch size other than the one
traced, so a dynamic batch axis is proven to work) and comparing every output with
:func:`dlinfer.numerics.compare_outputs`. The TensorRT plugin builds its engines from
this function's output.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dlinfer.api import (
    Converter,
    ConvertOptions,
    ConvertResult,
    DlinferError,
    ModelConfig,
    ModelLoadError,
    TensorSpec,
    compare_outputs,
)

from .modules import FORMATS, summarize

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 9, 17, 17
#: Batch size of the traced sample inputs; validation runs at VALIDATE_BATCH.
TRACE_BATCH, VALIDATE_BATCH = 2, 3


class ExportError(DlinferError):
    """The module could not be exported, or the ONNX model disagrees with torch."""


def export_onnx(
    model: Any,
    dst: str | Path,
    *,
    config: ModelConfig | None = None,
    inputs: list[TensorSpec] | None = None,
    output_names: list[str] | None = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    validate: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    allow_pickle: bool = False,
    seed: int = 0,
) -> ConvertResult:
    """Export ``model`` to the ONNX file ``dst`` and (by default) validate it against torch.

    ``model`` is an ``nn.Module``, a ``torch.jit.ScriptModule``, an ExportedProgram, or
    the path of a model file / version folder in any served torch format (read with
    ``config`` exactly as the server would; pickled modules need ``allow_pickle``).
    Input and output names, dtypes and shapes come from ``inputs``/``output_names``, else
    from ``config``'s ``[[input]]``/``[[output]]``, else from the ExportedProgram signature.
    """
    config = config or ModelConfig()
    opset = DEFAULT_OPSET if opset is None else opset
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} is not supported by the TorchScript-based exporter; use {MIN_OPSET}-{MAX_OPSET}"
        )
    runner = _runner_for(model, config, inputs, allow_pickle)
    specs = list(inputs) if inputs else runner.inputs
    names_out = list(output_names) if output_names else [t.name for t in runner.outputs]
    batched = dynamic_batch and bool(specs) and all(t.shape and t.shape[0] == -1 for t in specs)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # torch's reference outputs come first: tracing for export leaves a scripted module's
    # cached execution plans unfit for inference mode.
    feeds = _samples(specs, VALIDATE_BATCH if batched else TRACE_BATCH, rng) if validate else {}
    expected = dict(zip(names_out, runner.predict(feeds).values(), strict=True)) if validate else {}
    _export(runner, specs, names_out, dst, opset, batched, rng)
    notes = [f"opset {opset}", "dynamic batch axis" if batched else "static shapes"]
    if not validate:
        return ConvertResult(dst, notes=tuple(notes))
    cmp = _validate(feeds, expected, dst, atol, rtol)
    notes.append(f"validated at {f'batch {VALIDATE_BATCH}' if batched else 'the traced shapes'}: {cmp.describe()}")
    if not cmp.ok:
        raise ExportError(
            f"{dst.name}: ONNX Runtime disagrees with torch beyond atol={atol}, rtol={rtol}: {cmp.describe()}"
        )
    return ConvertResult(dst, cmp.max_abs_error, cmp.max_rel_error, tuple(notes))


def _runner_for(model: Any, config: ModelConfig, inputs: list[TensorSpec] | None, allow_pickle: bool) -> Any:
    """A :class:`TorchRunner` around ``model`` (loaded from disk when it is a path)."""
    import attrs
    import torch

    from . import modules
    from .runner import TorchRunner

    device = modules.resolve_device(config.device)
    if inputs:
        # Explicit specs stand in for [[input]]: full shapes, so no batch dim is prepended.
        config = attrs.evolve(
            config,
            max_batch_size=0,
            input=tuple(_tensor_config(t) for t in inputs),
        )
    if isinstance(model, str | Path):
        path = Path(model)
        fmt = config.format or (modules.detect_file(path) if path.is_file() else modules.detect_folder(path))
        if fmt is None:
            raise ModelLoadError(f"{path}: no model.pt2, model.pt or model.pth here")
        loaded = modules.load_module(fmt, modules.model_file(path, config, fmt), config, device, allow_pickle)
    elif isinstance(model, torch.export.ExportedProgram):
        ins, outs, names = modules.program_specs(model)
        loaded = modules.LoadedModule(model.module(), "torch_export", ins, outs, names)
    elif isinstance(model, torch.jit.ScriptModule):
        loaded = modules.LoadedModule(model.eval(), "torchscript")
    elif isinstance(model, torch.nn.Module):
        loaded = modules.LoadedModule(model.eval(), "pytorch_state_dict")
    else:
        raise ExportError(f"cannot export a {type(model).__name__}; give a torch module, program or model file")
    return TorchRunner(loaded, config, device)


def _tensor_config(t: TensorSpec) -> Any:
    from dlinfer.api import TensorConfig

    return TensorConfig(t.name, t.datatype, tuple(t.shape))


def _samples(specs: list[TensorSpec], batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from .tensors import example_array

    return {t.name: example_array(t, batch, rng) for t in specs}


def _export(
    runner: Any, specs: list[TensorSpec], outputs: list[str], dst: Path, opset: int, batched: bool, rng: Any
) -> None:
    import torch

    module = _flat_module(runner.module, runner.format)
    example = tuple(torch.from_numpy(a) for a in _samples(specs, TRACE_BATCH, rng).values())
    axes = {n: {0: "batch"} for n in [t.name for t in specs] + outputs} if batched else None
    try:
        with warnings.catch_warnings():
            # The exporter warns that it is the legacy path; it is chosen on purpose (see module doc).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(dst),
                dynamo=False,
                opset_version=opset,
                input_names=[t.name for t in specs],
                output_names=outputs,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    except Exception as exc:
        hint = ""
        if runner.format == "torchscript" and "DictConstruct" in str(exc):
            hint = " (a TorchScript module returning a dict cannot be exported; export the eager module instead)"
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {summarize(exc)}{hint}") from exc
    import onnx

    try:
        onnx.checker.check_model(str(dst))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{dst.name}: the exported model fails the ONNX checker: {summarize(exc)}") from exc


def _validate(
    feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray], dst: Path, atol: float, rtol: float
) -> Any:
    """Run the ONNX file in ONNX Runtime on ``feeds`` and compare with torch's ``expected``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    wanted = {o.name for o in session.get_inputs()}  # the exporter drops inputs the graph never reads
    got = session.run(list(expected), {k: v for k, v in feeds.items() if k in wanted})
    return compare_outputs(expected, dict(zip(expected, got, strict=True)), atol=atol, rtol=rtol)


def _flat_module(inner: Any, fmt: str) -> Any:
    """Wrap ``inner`` so its outputs are a flat tuple in the order the runner names them.

    Needed for dict outputs and for ExportedProgram modules, whose ``train()`` raises
    (the exporter switches modules to eval mode). TorchScript modules go in unwrapped:
    the tracer cannot step into a scripted call from Python.
    """
    import torch

    from .runner import flatten_outputs

    if fmt == "torchscript":
        return inner

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def train(self, mode: bool = True) -> Flat:  # the wrapped module is already in eval mode
            return self

        def forward(self, *args: Any) -> tuple[Any, ...]:
            return tuple(t for _, t in flatten_outputs(self.inner(*args)))

    return Flat()


class TorchToOnnx(Converter):
    """``dlinfer-core convert <model> --to onnx`` for every torch format."""

    name = "torch-onnx"
    source_formats = FORMATS
    target_format = "onnx"

    def convert(self, src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
        cfg = options.model_config
        return export_onnx(
            src,
            dst,
            config=cfg,
            opset=options.opset,
            dynamic_batch=options.dynamic_batch,
            validate=options.validate,
            atol=options.atol,
            rtol=options.rtol,
            # No node is involved on the command line: the model config given is the opt-in.
            allow_pickle=cfg.allow_pickle,
        )
