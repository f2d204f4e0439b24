"""ScaledTanh on a real GPU: the plugin registered from the installed entry point, an engine
built by dlinfer-trt's builder, served as ``model.plan`` by a real node, checked against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from dlinfer import ModelConfig, TensorSpec
from dlinfer.config import node_config_from_dict
from dlinfer.plugins import Plugins
from dlinfer.testing import RunningNode, V2Client, node_config, write_model
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
    plugins = Plugins(node_config_from_dict({})).load()
    names = register_plugins(e.obj for e in plugins.registry("dlinfer_trt_plugins").values())
    assert OP_TYPE in names
    assert trt.get_plugin_registry().get_creator(OP_TYPE, "1", "") is not None
    return names


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-5), ("fp16", 1e-2)])
def test_engine_with_the_plugin_matches_numpy(
    op_plugins: list[str], tmp_path: Path, precision: str, atol: float
) -> None:
    bias = np.linspace(-1.0, 1.0, FEATURES, dtype=np.float32)
    onnx_path = tmp_path / "scaled_tanh.onnx"
    onnx_path.write_bytes(scaled_tanh_model(ALPHA, BETA, bias))
    require_plugins(onnx.load(str(onnx_path)), op_plugins)
    profile = batch_profile([TensorSpec("x", "FP32", (-1, FEATURES))], ModelConfig(), MAX_BATCH)
    engine = build_engine(onnx_path, BuildOptions(precision, profile=profile))

    repository = tmp_path / "models"
    write_model(repository, "scaled_tanh", 1, {"model.plan": engine})
    rng = np.random.default_rng(3)
    with RunningNode(node_config(repository)) as node:
        client = V2Client(node.url)
        assert client.metadata("scaled_tanh")["platform"] == "tensorrt_plan"
        for batch in (1, 5, MAX_BATCH):
            # Wide enough to reach tanh's saturation on both sides.
            x = (rng.standard_normal((batch, FEATURES)) * 3).astype(np.float32)
            got = client.infer("scaled_tanh", {"x": x})["y"]
            assert got.shape == (batch, FEATURES)
            np.testing.assert_allclose(got, scaled_tanh(x, ALPHA, BETA) + bias, rtol=0, atol=atol)
