"""Fixtures of the Caffe plugin's tests: real Caffe files written in tmp_path, run two ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlinfer_caffe.converter import convert_files, opencv_outputs
from dlinfer_caffe.writer import write_caffe_model


class CaffeCase:
    """One Caffe model on disk, runnable through the converter (ONNX Runtime) and OpenCV DNN."""

    def __init__(self, folder: Path, prototxt: str, seed: int = 0, legacy_blobs: bool = False) -> None:
        self.folder = folder
        self.weights = write_caffe_model(folder, prototxt, seed=seed, legacy_blobs=legacy_blobs)
        self.prototxt = folder / "deploy.prototxt"
        self.caffemodel = folder / "model.caffemodel"
        self.model = convert_files(self.prototxt, self.caffemodel)

    def inputs(self, batch: int = 2, seed: int = 1) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for i in self.model.graph.input:
            dims = [d.dim_value or batch for d in i.type.tensor_type.shape.dim]
            out[i.name] = rng.standard_normal(dims).astype(np.float32)
        return out

    def run_onnx(self, inputs: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        model = type(self.model)()
        model.CopyFrom(self.model)
        exposed = {o.name for o in model.graph.output}
        # Intermediate blobs (their last write carries the blob's name) become extra outputs.
        for name in names or []:
            if name not in exposed:
                model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = names or [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))

    def run_opencv(self, inputs: dict[str, np.ndarray], blobs: list[str]) -> dict[str, np.ndarray]:
        return opencv_outputs(self.prototxt, self.caffemodel, inputs, blobs)


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """Max abs error relative to the output's scale (its largest magnitude)."""
    scale = max(float(np.abs(expected).max()), 1e-6)
    return float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()) / scale


@pytest.fixture
def caffe_case(tmp_path: Path):  # type: ignore[no-untyped-def]
    counter = iter(range(1000))

    def make(prototxt: str, **kw) -> CaffeCase:  # type: ignore[no-untyped-def]
        return CaffeCase(tmp_path / f"model{next(counter)}", prototxt, **kw)

    return make
