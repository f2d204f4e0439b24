"""ScaledTanh on a real GPU: the plugin registered from the installed entry point, an engine
built by dlinfer-trt's builder, served as ``model.plan`` by a real node, checked against numpy."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from dlinfer.api import ModelConfig, Plugins, TensorSpec, node_config_from_dict
from dlinfer.api.testing import RunningNode, V2Client, free_ports, node_config, write_model
from dlinfer_trt import availability
from dlinfer_trt.builder import BuildOptions, build_engine
from dlinfer_trt.customops import register_plugins, require_plugins
from dlinfer_trt.profiles import batch_profile
from dlinfer_trt_scaledtanh import OP_TYPE, scaled_tanh, scaled_tanh_model

pytestmark = pytest.mark.gpu

trt = pytest.importorskip("tensorrt")
pytest.importorskip("cupy")

ALPHA, BETA = 1.5, 0.7
FEATURES = 8
MAX_BATCH = 8


@pytest.fixture(scope="module")
def op_plugins() -> list[str]:
    """Register what the installed plugins' ``dlinfer_trt_plugins`` hooks provide, as the trt optimizer does."""
    gpu, reason = availability.status()
    if gpu is None:
        pytest.skip(f"TensorRT cannot run here: {reason}")
    # In this process the test builds engines before any node starts.
    plugins = Plugins(node_config_from_dict({})).load()
    names = register_plugins(e.obj for e in plugins.registry("dlinfer_trt_plugins").values())
    assert OP_TYPE in names
    assert trt.get_plugin_registry().get_creator(OP_TYPE, "1", "") is not None
    return names


def write_engine(repository: Path, precision: str) -> np.ndarray:
    """Build the tiny model's engine with dlinfer-trt's builder into ``repository/scaled_tanh/1/model.plan``;
    return the model's bias."""
    bias = np.linspace(-1.0, 1.0, FEATURES, dtype=np.float32)
    onnx_path = repository.parent / f"scaled_tanh_{precision}.onnx"
    onnx_path.write_bytes(scaled_tanh_model(ALPHA, BETA, bias))
    profile = batch_profile([TensorSpec("x", "FP32", (-1, FEATURES))], ModelConfig(), MAX_BATCH)
    engine = build_engine(onnx_path, BuildOptions(precision, profile=profile))
    write_model(repository, "scaled_tanh", 1, {"model.plan": engine})
    return bias


def check_answers(client: V2Client, bias: np.ndarray, atol: float) -> None:
    rng = np.random.default_rng(3)
    assert client.metadata("scaled_tanh")["platform"] == "tensorrt_plan"
    for batch in (1, 5, MAX_BATCH):
        # Wide enough to reach tanh's saturation on both sides.
        x = (rng.standard_normal((batch, FEATURES)) * 3).astype(np.float32)
        got = client.infer("scaled_tanh", {"x": x})["y"]
        assert got.shape == (batch, FEATURES)
        np.testing.assert_allclose(got, scaled_tanh(x, ALPHA, BETA) + bias, rtol=0, atol=atol)


def test_graph_with_the_op_passes_the_check(op_plugins: list[str]) -> None:
    model = onnx.load_from_string(scaled_tanh_model(ALPHA, BETA, np.zeros(FEATURES, np.float32)))
    require_plugins(model, op_plugins)


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-5), ("fp16", 1e-2)])
def test_engine_with_the_plugin_matches_numpy(
    op_plugins: list[str], tmp_path: Path, precision: str, atol: float
) -> None:
    repository = tmp_path / "models"
    bias = write_engine(repository, precision)
    with RunningNode(node_config(repository)) as node:
        check_answers(V2Client(node.url), bias, atol)


def test_fresh_node_registers_the_plugin_at_start(op_plugins: list[str], tmp_path: Path) -> None:
    """A new ``dlinfer-core`` process: only its own start-up registers the creator the engine needs."""
    repository = tmp_path / "models"
    bias = write_engine(repository, "fp32")
    port, grpc_port = free_ports(2)
    log = tmp_path / "node.log"
    cmd = [sys.executable, "-m", "dlinfer.cli", "--model-repository", str(repository), "--log-level", "info"]
    with log.open("w") as stderr:
        node = subprocess.Popen([*cmd, "--port", str(port), "--grpc-port", str(grpc_port)], stderr=stderr)
    try:
        client = V2Client(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while not client.ready("scaled_tanh"):
            assert node.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        check_answers(client, bias, 1e-5)
    finally:
        node.terminate()
        node.wait(60)
    assert re.search(r"registered TensorRT operator plugins: .*\bScaledTanh\b", log.read_text())
