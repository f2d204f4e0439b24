"""Linear models stored as ``weights.npz``: ``y = x @ W + b``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dlinfer.api import Loader, ModelConfig, ModelLoadError, Runner, TensorSpec


class NpzRunner(Runner):
    platform = "npz_linear"

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        self.w, self.b = w, b
        self.inputs = [TensorSpec("x", "FP32", (-1, w.shape[0]))]
        self.outputs = [TensorSpec("y", "FP32", (-1, w.shape[1]))]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] @ self.w + self.b}


class NpzLoader(Loader):
    name = "npz"
    formats = ("npz",)

    @classmethod
    def detect(cls, path: Path) -> str | None:
        return "npz" if (path / "weights.npz").is_file() else None

    def load(self, config: ModelConfig, path: Path) -> Runner:
        f = path / "weights.npz"
        try:
            # allow_pickle=False: an .npz from an untrusted repository cannot run code.
            with np.load(f, allow_pickle=False) as data:
                w = np.asarray(data["W"], dtype=np.float32)
                b = np.asarray(data["b"], dtype=np.float32) if "b" in data else np.zeros(w.shape[1], np.float32)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(f"{f.name}: not a weights file with an array 'W': {exc}") from exc
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise ModelLoadError(f"{f.name}: W must be 2-D and b must have W.shape[1] elements")
        return NpzRunner(w, b)
