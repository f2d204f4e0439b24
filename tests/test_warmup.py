"""Warm-up: sample calls before a version takes traffic; a failing one fails the load."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlinfer.config import node_config_from_dict
from dlinfer.plugins import Plugins
from dlinfer.repository import ModelRepository
from dlinfer.testing import onnx_linear_model, write_model


def _states(root: Path) -> dict[str, tuple[str, str]]:
    """Load the repository once; each model's (state, reason)."""
    cfg = node_config_from_dict({"repository": {"path": str(root)}, "threads": {"intra_op": 1}})
    repo = ModelRepository(cfg, Plugins(cfg).load())

    async def run() -> dict[str, tuple[str, str]]:
        await repo.start()
        try:
            return {row["name"]: (row["state"], row.get("reason", "")) for row in repo.index()}
        finally:
            await repo.close()

    return asyncio.run(run())


def conv3x3_any_size() -> bytes:
    """A 3x3 convolution without padding over images of any height and width: it cannot
    run on the 1x1 images a generated sample has, but serves real images."""
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, "h2", "w2"])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def test_warmup_calls_the_model_before_it_is_ready(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(tmp_path, "warm", 1, {"model.onnx": onnx_linear_model()}, {"warmup": 3})
    write_model(tmp_path, "cold", 1, {"model.onnx": onnx_linear_model()})
    with caplog.at_level(logging.INFO, logger="dlinfer.warmup"):
        states = _states(tmp_path)
    assert states["warm"][0] == states["cold"][0] == "READY"
    lines = [r.getMessage() for r in caplog.records if r.name == "dlinfer.warmup"]
    # Generated samples: one row and a batch of two (the model batches), three times each.
    assert any(line.startswith("model warm version 1 warmed up: 6 calls") for line in lines), lines
    assert not any("model cold" in line for line in lines)  # off unless asked


def test_warmup_runs_the_sample_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(tmp_path, "m", 1, {"model.onnx": onnx_linear_model()}, {"warmup": 2, "optimize_samples": "s"})
    mdir = tmp_path / "m"
    (mdir / "s").mkdir()
    for i, rows in enumerate((1, 4, 16)):  # the batch sizes clients send
        np.savez(mdir / "s" / f"{i}.npz", x=np.ones((rows, 4), np.float32))
    with caplog.at_level(logging.INFO, logger="dlinfer.warmup"):
        assert _states(tmp_path)["m"][0] == "READY"
    assert any("warmed up: 6 calls" in r.getMessage() for r in caplog.records if r.name == "dlinfer.warmup")


def test_a_failing_warmup_fails_the_load_with_the_reason(tmp_path: Path) -> None:
    write_model(tmp_path, "conv", 1, {"model.onnx": conv3x3_any_size()}, {"warmup": 1})
    state, reason = _states(tmp_path)["conv"]
    assert state == "UNAVAILABLE" and reason.startswith("warm-up call failed:")
    # Real samples of a size the model takes let the same model warm up and load.
    mdir = tmp_path / "conv"
    (mdir / "config.toml").write_text('warmup = 1\noptimize_samples = "s"\n')
    (mdir / "s").mkdir()
    np.savez(mdir / "s" / "image.npz", x=np.ones((1, 1, 8, 8), np.float32))
    assert _states(tmp_path)["conv"] == ("READY", "")
