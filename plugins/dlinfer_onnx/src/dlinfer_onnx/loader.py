"""Load ``model.onnx`` files into ONNX Runtime sessions.

Model config ``[parameters]`` understood here:

- ``graph_optimization_level``: "disable", "basic", "extended" or "all" (default "all").
- ``providers``: ONNX Runtime execution providers, default ``["CPUExecutionProvider"]``.
- ``allow_spinning``: let idle worker threads spin (default false: spinning threads burn
  CPU that the server's own threads need).
- ``filename``: the model file in the version folder (default ``model.onnx``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlinfer.api import (
    STANDARD_DOMAINS,
    InvalidInput,
    Loader,
    ModelConfig,
    ModelLoadError,
    Runner,
    TensorSpec,
    custom_ops,
)

#: ONNX Runtime type strings -> V2 datatypes.
ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_LEVELS = ("disable", "basic", "extended", "all")


def _spec(arg: Any) -> TensorSpec:
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which dlinfer cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def model_file(path: Path, config: ModelConfig) -> Path:
    """The ONNX file of a version folder: ``parameters.filename`` or ``model.onnx``."""
    name = config.parameters.get("filename", "model.onnx")
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise ModelLoadError(f"parameters.filename must be a plain file name, got {name!r}")
    f = path / name
    if not f.is_file():
        raise ModelLoadError(f"version folder {path.name!r} has no {name}")
    return f


def _as_text(name: str, arr: np.ndarray) -> np.ndarray:
    """ONNX Runtime string tensors hold ``str``; V2 BYTES arrive as ``bytes``."""
    try:
        flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input {name!r}: this model takes text, and an element is not UTF-8: {exc}") from None
    return np.array(flat, dtype=object).reshape(arr.shape)


class OnnxRunner(Runner):
    """One ONNX Runtime InferenceSession."""

    platform = "onnxruntime_onnx"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = [_spec(a) for a in session.get_inputs()]
        self.outputs = [_spec(a) for a in session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._strings = {t.name for t in self.inputs if t.datatype == "BYTES"}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: (_as_text(k, v) if k in self._strings else v) for k, v in inputs.items()}
        results = self.session.run(self._output_names, feed)
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self.session = None


class OnnxLoader(Loader):
    """ONNX models through ONNX Runtime."""

    name = "onnx"
    formats = ("onnx",)

    @classmethod
    def detect(cls, path: Path) -> str | None:
        return "onnx" if (path / "model.onnx").is_file() else None

    def session_options(self, config: ModelConfig) -> Any:
        import onnxruntime as ort

        params = config.parameters
        level = params.get("graph_optimization_level", "all")
        if level not in _LEVELS:
            raise ModelLoadError(
                f"parameters.graph_optimization_level must be one of {', '.join(_LEVELS)}, got {level!r}"
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        opts.intra_op_num_threads = self.threads(config)
        opts.inter_op_num_threads = max(self.node_config.threads.inter_op, 1)
        spinning = "1" if params.get("allow_spinning", False) else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        return opts

    def load(self, config: ModelConfig, path: Path) -> Runner:
        import onnxruntime as ort

        f = model_file(path, config)
        providers = config.parameters.get("providers", ["CPUExecutionProvider"])
        try:
            session = ort.InferenceSession(str(f), self.session_options(config), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelLoadError(f"{f.name}: ONNX Runtime cannot load it: {exc}{_custom_op_hint(f)}") from exc
        return OnnxRunner(session)


#: Operator domains ONNX Runtime implements besides the ONNX standard (its contrib ops).
_ORT_DOMAINS = STANDARD_DOMAINS | {"com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental"}


def _custom_op_hint(f: Path) -> str:
    """Why a graph with operators outside ONNX Runtime's domains fails, and what serves it."""
    import onnx

    try:
        ops = custom_ops(onnx.load(str(f), load_external_data=False), _ORT_DOMAINS)
    except Exception:  # not a readable ONNX file at all: ONNX Runtime's message says enough
        return ""
    if not ops:
        return ""
    listed = ", ".join(f"{op} (domain {d!r})" for d, op in ops)
    return (
        f". The graph uses custom operators ONNX Runtime does not implement: {listed}. Serve a TensorRT engine "
        "(model.plan) built with the operator's plugin instead (docs/backends/tensorrt.md, 'Custom operators')"
    )
