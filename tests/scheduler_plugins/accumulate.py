"""A stateful backend for sequence-batching tests: a running sum per sequence.

Loaded through ``plugins_dir`` like any single-file plugin. A version folder
holding ``accumulate.toml`` is a model with input ``INPUT`` (INT32, [batch, 1])
and the control inputs ``START`` (INT32), ``END`` (BOOL), ``READY`` (FP32) and
``CORRID`` (``parameters.corrid_datatype``, default UINT64), each [batch, 1].
For every ready row it adds ``INPUT`` to the sum kept for that row's CORRID
(reset on START, dropped after END) and returns the sum as ``OUTPUT``, the
control values it saw (``START_OUT``, ``END_OUT``, ``READY_OUT``,
``CORRID_OUT``) and the instance thread that ran it (``INSTANCE``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from dlinfer import Loader, ModelConfig, Runner, TensorSpec, hookimpl


class AccumulateRunner(Runner):
    def __init__(self, corrid_datatype: str) -> None:
        self.inputs = [
            TensorSpec("INPUT", "INT32", (-1, 1)),
            TensorSpec("START", "INT32", (-1, 1)),
            TensorSpec("END", "BOOL", (-1, 1)),
            TensorSpec("READY", "FP32", (-1, 1)),
            TensorSpec("CORRID", corrid_datatype, (-1, 1)),
        ]
        self.outputs = [
            TensorSpec("OUTPUT", "INT32", (-1, 1)),
            TensorSpec("START_OUT", "INT32", (-1, 1)),
            TensorSpec("END_OUT", "BOOL", (-1, 1)),
            TensorSpec("READY_OUT", "FP32", (-1, 1)),
            TensorSpec("CORRID_OUT", corrid_datatype, (-1, 1)),
            TensorSpec("INSTANCE", "BYTES", (-1, 1)),
        ]
        self._sums: dict[object, int] = {}
        self._lock = threading.Lock()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = inputs["INPUT"].reshape(-1)
        start, end = inputs["START"].reshape(-1), inputs["END"].reshape(-1)
        ready, corrid = inputs["READY"].reshape(-1), inputs["CORRID"].reshape(-1)
        sums = np.zeros(len(values), np.int32)
        with self._lock:
            for i, key in enumerate(corrid.tolist()):
                if not ready[i]:
                    continue
                total = (0 if start[i] else self._sums.get(key, 0)) + int(values[i])
                sums[i] = total
                if end[i]:
                    self._sums.pop(key, None)
                else:
                    self._sums[key] = total
        name = threading.current_thread().name.encode()
        return {
            "OUTPUT": sums.reshape(-1, 1),
            "START_OUT": inputs["START"],
            "END_OUT": inputs["END"],
            "READY_OUT": inputs["READY"],
            "CORRID_OUT": inputs["CORRID"],
            "INSTANCE": np.array([name] * len(values), dtype=object).reshape(-1, 1),
        }


class AccumulateLoader(Loader):
    name = "accumulate"
    formats = ("accumulate",)

    @classmethod
    def detect(cls, path: Path) -> str | None:
        return "accumulate" if (path / "accumulate.toml").is_file() else None

    def load(self, config: ModelConfig, path: Path) -> Runner:
        return AccumulateRunner(str(config.parameters.get("corrid_datatype", "UINT64")))


@hookimpl
def dlinfer_model_formats() -> list[type]:
    return [AccumulateLoader]
