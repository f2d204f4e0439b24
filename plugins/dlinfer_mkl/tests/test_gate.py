"""The numerics gate: a variant that drifts is rejected with a logged reason and never served."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from dlinfer.api import ModelConfig, ModelLoadError, OptimizeTolerance, Plugins, Runner, TensorSpec, hookimpl
from dlinfer.api.testing import V2Error, node_config, write_model
from dlinfer.optimize import OptimizeContext, Optimizer, check, run_pipeline
from dlinfer.server.app import REPOSITORY

X = np.random.default_rng(11).standard_normal((2, 3, 8, 8)).astype(np.float32)


class PerturbWeights(Optimizer):
    """A broken optimizer: scales the first weight tensor by ``1 + scale`` and runs it in ONNX Runtime."""

    name = "perturb-weights"

    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        from dlinfer_onnx.loader import OnnxRunner

        model = onnx.load(str(ctx.path / "model.onnx"))
        init = model.graph.initializer[0]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * (1 + ctx.options["scale"]), init.name))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return OnnxRunner(session)


class Crashes(Optimizer):
    name = "crashes"

    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        raise RuntimeError("cannot optimize this")


class TestOptimizers:
    """A plugin object registering the broken optimizers."""

    @hookimpl
    def dlinfer_optimizers(self) -> list[type]:
        return [PerturbWeights, Crashes]


def original(model: bytes) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["logits"], {"x": X})[0]


def test_gate_rejects_perturbed_weights_and_serves_the_original(
    dlinfer_server, dlinfer_repository: Path, conv_onnx: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    config = {
        "optimize": ["openvino", "perturb-weights"],
        "optimize_options": {"perturb-weights": {"scale": 1e-3}},
    }
    write_model(dlinfer_repository, "conv", 1, {"model.onnx": conv_onnx}, config)
    with caplog.at_level(logging.INFO, logger="dlinfer.optimize"):
        node = dlinfer_server(plugins=[TestOptimizers()])
    # The step before the broken one is kept: still OpenVINO, still the original's numbers.
    assert node.client.metadata("conv")["platform"] == "openvino"
    np.testing.assert_allclose(node.client.infer("conv", {"x": X})["logits"], original(conv_onnx), rtol=1e-5, atol=1e-5)
    rejected = [r.getMessage() for r in caplog.records if "perturb-weights rejected" in r.getMessage()]
    assert rejected and "numerics out of tolerance" in rejected[0] and "max abs error" in rejected[0]
    assert any("optimizer openvino applied" in r.getMessage() for r in caplog.records)
    # Operators see the same without the log: each step, applied or refused with the reason.
    steps = node.client.request("GET", "/v2/models/conv/config")["optimized"]
    assert [(s["optimizer"], s["applied"]) for s in steps] == [("openvino", True), ("perturb-weights", False)]
    assert steps[0]["reason"] == "" and "numerics out of tolerance" in steps[1]["reason"]


def test_a_looser_tolerance_lets_the_same_step_through(dlinfer_server, dlinfer_repository: Path, conv_onnx) -> None:
    config = {
        "optimize": ["perturb-weights"],
        "optimize_options": {"perturb-weights": {"scale": 1e-3, "atol": 1.0, "rtol": 0.1}},
    }
    write_model(dlinfer_repository, "conv", 1, {"model.onnx": conv_onnx}, config)
    node = dlinfer_server(plugins=[TestOptimizers()])
    got = node.client.infer("conv", {"x": X})["logits"]
    assert not np.allclose(got, original(conv_onnx), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, original(conv_onnx), rtol=0.1, atol=1.0)


def test_a_crashing_optimizer_is_rejected_and_the_model_still_serves(
    dlinfer_server, dlinfer_repository: Path, conv_onnx: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    write_model(dlinfer_repository, "conv", 1, {"model.onnx": conv_onnx}, {"optimize": ["crashes", "onnxruntime"]})
    with caplog.at_level(logging.WARNING, logger="dlinfer.optimize"):
        node = dlinfer_server(plugins=[TestOptimizers()])
    np.testing.assert_allclose(node.client.infer("conv", {"x": X})["logits"], original(conv_onnx), rtol=1e-5, atol=1e-5)
    assert any(
        "crashes rejected" in r.getMessage() and "cannot optimize this" in r.getMessage() for r in caplog.records
    )


def test_an_optimizer_that_is_not_installed_fails_the_load_with_the_reason(
    dlinfer_server, dlinfer_repository: Path, conv_onnx: bytes
) -> None:
    write_model(dlinfer_repository, "conv", 1, {"model.onnx": conv_onnx}, {"optimize": ["no-such-optimizer"]})
    node = dlinfer_server()
    with pytest.raises(V2Error) as err:
        node.client.infer("conv", {"x": X})
    assert "no-such-optimizer" in err.value.message and "not installed" in err.value.message
    assert "openvino" in err.value.message  # the installed ones are listed


def test_bf16_stays_off_unless_asked(dlinfer_repository: Path, conv_onnx: bytes) -> None:
    from dlinfer_onnx.loader import OnnxLoader

    vdir = write_model(dlinfer_repository, "conv", 1, {"model.onnx": conv_onnx})
    config = node_config(dlinfer_repository)
    plugins = Plugins(config).load()
    for pipeline, precision in ((("openvino",), "f32"), (("openvino", "bf16"), "bf16")):
        cfg = ModelConfig(name="conv", optimize=pipeline)
        runner = OnnxLoader(config).load(cfg, vdir)
        result = run_pipeline(runner, cfg, vdir, plugins)
        assert result.applied == list(pipeline)
        assert result.runner.actual_precision() == precision
        result.runner.close()
    # Only the f32 variant passes the default (f32) gate when forced to it.
    cfg = ModelConfig(
        name="conv", optimize=("bf16",), optimize_options={"bf16": {"atol": 1e-6, "rtol": 1e-6, "top1": False}}
    )
    result = run_pipeline(OnnxLoader(config).load(cfg, vdir), cfg, vdir, plugins)
    assert result.applied == [] and "out of tolerance" in result.steps[0].reason
    result.runner.close()


def test_samples_folder_feeds_the_gate(dlinfer_server, dlinfer_repository: Path, conv_onnx: bytes) -> None:
    write_model(
        dlinfer_repository,
        "conv",
        1,
        {"model.onnx": conv_onnx},
        {"optimize": ["openvino"], "optimize_samples": "samples"},
    )
    samples = dlinfer_repository / "conv" / "samples"
    samples.mkdir()
    np.savez(samples / "a.npz", x=X)
    node = dlinfer_server()
    assert node.client.metadata("conv")["platform"] == "openvino"
    np.savez(samples / "b.npz", y=X)  # a sample without the model's input: the load says why
    with pytest.raises(ModelLoadError, match=r"b\.npz lacks inputs"):
        node.call(lambda: node.app[REPOSITORY].load("conv"))


class Fixed(Runner):
    """Returns the same outputs whatever the input: the gate's arithmetic in isolation."""

    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("y", "FP32", (-1, 2))]

    def __init__(self, y: list[float]) -> None:
        self.y = np.array([y], dtype=np.float32)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": self.y}


def test_relative_error_is_against_the_output_scale_unless_elementwise() -> None:
    reference = [{"y": np.array([[100.0, 0.001]], dtype=np.float32)}]
    samples = [{"x": np.zeros((1, 2), np.float32)}]
    close = Fixed([100.0001, 0.0011])  # off by 1e-4: a rounding difference at this scale
    scaled = check(reference, close, samples, OptimizeTolerance())
    assert scaled.ok and scaled.max_rel_error == pytest.approx(1e-6, rel=0.2)
    assert not check(reference, close, samples, OptimizeTolerance(elementwise=True)).ok
    assert not check(reference, Fixed([100.01, 0.001]), samples, OptimizeTolerance()).ok
    # top-1 flips are caught even inside a loose tolerance
    assert not check(reference, Fixed([0.0, 0.002]), samples, OptimizeTolerance(rtol=1.0, top1=True)).ok
