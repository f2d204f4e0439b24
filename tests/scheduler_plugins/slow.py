"""A backend whose model sleeps: deterministic slow inference for scheduler, metrics and drain tests.

Loaded through ``plugins_dir`` like any single-file plugin. A version folder
holding ``slow.toml`` is a model with input ``x`` and output ``y = 2x + 1``
(FP32, shape [batch, n]) that sleeps ``parameters.delay_s`` per call and, when
``parameters.record`` names a file, appends each call's batch size to it
before computing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dlinfer import Loader, ModelConfig, Runner, TensorSpec, hookimpl


class SlowRunner(Runner):
    def __init__(self, delay_s: float, record: str | None) -> None:
        self.delay_s = delay_s
        self.record = record
        self.inputs = [TensorSpec("x", "FP32", (-1, -1))]
        self.outputs = [TensorSpec("y", "FP32", (-1, -1))]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        if self.record:
            with open(self.record, "a") as f:
                f.write(f"{x.shape[0]}\n")
        time.sleep(self.delay_s)
        return {"y": x * 2 + 1}


class SlowLoader(Loader):
    name = "slow"
    formats = ("slow",)

    @classmethod
    def detect(cls, path: Path) -> str | None:
        return "slow" if (path / "slow.toml").is_file() else None

    def load(self, config: ModelConfig, path: Path) -> Runner:
        return SlowRunner(float(config.parameters.get("delay_s", 0.2)), config.parameters.get("record"))


@hookimpl
def dlinfer_model_formats() -> list[type]:
    return [SlowLoader]
