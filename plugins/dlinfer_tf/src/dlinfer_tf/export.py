"""ONNX export of SavedModels and Keras models through tf2onnx.

:func:`export_onnx` is the importable helper (the TensorRT plugin builds its
engines from its output); :class:`TFToOnnx` offers it to ``dlinfer-core
convert``. Every export is checked by running TensorFlow and ONNX Runtime on
the same random inputs and comparing with :func:`dlinfer.numerics.compare_outputs`.
ONNX tensors keep the signature's input and output names, so clients of the
TensorFlow model work unchanged against the ONNX one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from dlinfer.api import (
    Converter,
    ConvertOptions,
    ConvertResult,
    InferenceError,
    ModelConfig,
    ModelLoadError,
    NodeConfig,
    TensorSpec,
    compare_outputs,
    numpy_dtype,
)

from .loader import KerasLoader, SavedModelLoader, TFRunner

log = logging.getLogger("dlinfer.tf.export")

#: Opset used when none is asked for: supported by ONNX Runtime and TensorRT 8.6+.
DEFAULT_OPSET = 17
#: Size given to dynamic dimensions of the random validation inputs.
VALIDATION_DIM = 2


def load_tf_model(
    src: Path, parameters: dict[str, Any] | None = None, node_config: NodeConfig | None = None
) -> TFRunner:
    """Load a SavedModel folder or a ``.keras`` file (or its folder) as a runner.

    ``parameters`` are the model config's (``signature_name``, ``tags``, ``filename``).
    """
    src = Path(src)
    folder = src if src.is_dir() else src.parent
    params = dict(parameters or {})
    if src.is_file() and src.name == "saved_model.pb":
        loader: Any = SavedModelLoader
    elif src.is_file() and src.suffix == ".keras":
        loader = KerasLoader
        params["filename"] = src.name
    elif SavedModelLoader.detect(folder):
        loader = SavedModelLoader
    elif KerasLoader.detect(folder):
        loader = KerasLoader
    else:
        raise ModelLoadError(f"{src}: neither a SavedModel folder nor a .keras file")
    runner = loader(node_config or NodeConfig()).load(ModelConfig(parameters=params), folder)
    assert isinstance(runner, TFRunner)
    return runner


def sample_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching ``specs`` (dynamic dimensions of size 2)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        shape = tuple(VALIDATION_DIM if d == -1 else d for d in spec.shape)
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feed[spec.name] = rng.integers(0, 10, shape).astype(dtype)
        elif dtype.kind == "b":
            feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise ValueError(f"no random data for {spec.datatype}")
    return feed


def export_onnx(
    src: Path,
    dst: Path,
    *,
    opset: int | None = None,
    signature_name: str | None = None,
    parameters: dict[str, Any] | None = None,
    dynamic_batch: bool = True,
    validate: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    node_config: NodeConfig | None = None,
) -> ConvertResult:
    """Export a SavedModel signature or a Keras model to the ONNX file ``dst``.

    ``signature_name`` (default ``serving_default``) overrides the one in
    ``parameters`` (the model config's, e.g. ``tags`` or Keras' ``filename``).
    ``dynamic_batch=False`` fixes dynamic first dimensions to 1. With
    ``validate`` the ONNX model must match TensorFlow within ``atol``/``rtol``
    on random inputs, else :class:`dlinfer.InferenceError` is raised (and the
    file is still written, for inspection).
    """
    import tf2onnx

    params = dict(parameters or {})
    if signature_name is not None:
        params["signature_name"] = signature_name
    runner = load_tf_model(src, params, node_config)
    try:
        return _export(tf2onnx, runner, Path(dst), opset or DEFAULT_OPSET, dynamic_batch, validate, atol, rtol)
    finally:
        runner.close()


def _export(
    tf2onnx: Any,
    runner: TFRunner,
    dst: Path,
    opset: int,
    dynamic_batch: bool,
    validate: bool,
    atol: float,
    rtol: float,
) -> ConvertResult:
    import tensorflow as tf

    sig = runner.signature
    specs = []
    for t in sig.inputs:
        shape = [None if d == -1 else d for d in t.shape]
        if not dynamic_batch and shape and shape[0] is None:
            shape[0] = 1
        specs.append(tf.TensorSpec(shape, numpy_dtype(t.datatype) if t.datatype != "BYTES" else tf.string, name=t.name))
    function = tf.function(sig.function)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        tf2onnx.convert.from_function(function, input_signature=specs, opset=opset, output_path=str(dst))
    except Exception as exc:  # tf2onnx raises assorted errors for unsupported ops
        raise ModelLoadError(f"tf2onnx cannot convert signature {sig.name!r}: {type(exc).__name__}: {exc}") from exc
    notes = [f"opset {opset}", f"signature {sig.name!r}"]
    if not validate:
        return ConvertResult(dst, notes=tuple(notes))
    if any(t.datatype == "BYTES" for t in sig.inputs):
        return ConvertResult(dst, notes=(*notes, "not validated: string inputs have no random sample"))
    specs_used = [
        TensorSpec(t.name, t.datatype, (1, *t.shape[1:])) if not dynamic_batch and t.shape[:1] == (-1,) else t
        for t in sig.inputs
    ]
    feed = sample_inputs(specs_used)
    expected = sig.call(feed)
    actual = run_onnx(dst, feed)
    cmp = compare_outputs(expected, actual, atol=atol, rtol=rtol)
    log.info("ONNX export of %s: %s", sig.name, cmp.describe())
    if not cmp.ok:
        raise InferenceError(f"the ONNX export differs from TensorFlow: {cmp.describe()} ({dst})")
    return ConvertResult(dst, cmp.max_abs_error, cmp.max_rel_error, tuple(notes))


def run_onnx(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the ONNX model at ``path`` in ONNX Runtime, by name."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


class TFToOnnx(Converter):
    """``dlinfer-core convert <savedmodel or .keras> --to onnx [--opset N]``.

    ``--option signature_name=NAME`` (or the model config's
    ``parameters.signature_name``) picks the SavedModel signature.
    """

    name = "tf2onnx"
    source_formats = ("savedmodel", "keras")
    target_format = "onnx"

    def convert(self, src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
        return export_onnx(
            src,
            dst,
            opset=options.opset,
            parameters={**options.model_config.parameters, **options.extra},
            dynamic_batch=options.dynamic_batch,
            validate=options.validate,
            atol=options.atol,
            rtol=options.rtol,
        )
