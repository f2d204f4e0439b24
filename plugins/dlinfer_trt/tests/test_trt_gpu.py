"""TensorRT on a real GPU: engines match ONNX Runtime; the engine cache survives restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlinfer.api.testing import RunningNode, V2Client, node_config, write_model

pytestmark = pytest.mark.gpu


def small_cnn(seed: int = 0) -> bytes:
    """Conv(3->8, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(8->10) -> Softmax."""
    import onnx

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2
    fc = rng.standard_normal((10, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model).SerializeToString()


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-3), ("fp16", 1e-2)])
def test_engine_matches_onnxruntime_and_cache_is_reused(tmp_path: Path, precision: str, atol: float) -> None:
    onnx_bytes = small_cnn()
    config = {"max_batch_size": 8, "optimize": ["trt"], "optimize_options": {"trt": {"precision": precision}}}
    write_model(tmp_path, "cnn", 1, {"model.onnx": onnx_bytes}, config=config)
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    (expected,) = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(["probs"], {"x": x})
    for _restart in range(2):
        with RunningNode(node_config(tmp_path)) as node:
            client = V2Client(node.url)
            assert client.metadata("cnn")["platform"] == "tensorrt_plan"
            np.testing.assert_allclose(client.infer("cnn", {"x": x})["probs"], expected, atol=atol)
    engines = list((tmp_path / "cnn" / ".dlinfer-trt" / "1").glob("engine-*.plan"))
    assert len(engines) == 1


def test_int8_top1_agreement(tmp_path: Path) -> None:
    onnx_bytes = small_cnn()
    rng = np.random.default_rng(2)
    calib = tmp_path / "cnn" / "calibration"
    calib.mkdir(parents=True)
    for i in range(8):
        np.savez(calib / f"s{i}.npz", x=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    config = {
        "max_batch_size": 8,
        "optimize": ["trt"],
        "optimize_options": {"trt": {"precision": "int8", "top1": True, "atol": 1.0, "rtol": 1.0}},
    }
    write_model(tmp_path, "cnn", 1, {"model.onnx": onnx_bytes}, config=config)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    (expected,) = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(["probs"], {"x": x})
    with RunningNode(node_config(tmp_path)) as node:
        got = V2Client(node.url).infer("cnn", {"x": x})["probs"]
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99
