"""Tiny real models for the mkl optimizer tests."""

from __future__ import annotations

import numpy as np
import pytest


def conv_classifier(seed: int = 0) -> bytes:
    """x [batch, 3, 8, 8] -> Conv 3x3 (4) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (5) -> logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "conv_w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.standard_normal(4).astype(np.float32),
        "fc_w": rng.standard_normal((5, 4)).astype(np.float32),
        "fc_b": rng.standard_normal(5).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
        ],
        "conv_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def conv_onnx() -> bytes:
    return conv_classifier()
