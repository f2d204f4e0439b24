"""Load failures of dlinfer-onnx say what is wrong and what would serve the model."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper

from dlinfer.api import ModelConfig, ModelLoadError, NodeConfig
from dlinfer_onnx.loader import OnnxLoader


def _custom_op_model() -> bytes:
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Swoosh", ["r"], ["y"], domain="com.example"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    return model.SerializeToString()


def _load(folder: Path, data: bytes) -> None:
    (folder / "model.onnx").write_bytes(data)
    OnnxLoader(NodeConfig()).load(ModelConfig(), folder)


def test_custom_operator_is_named_with_the_way_to_serve_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, _custom_op_model())
    message = str(info.value)
    assert "ONNX Runtime cannot load it" in message
    assert "Swoosh (domain 'com.example')" in message and "model.plan" in message


def test_corrupt_file_gets_onnx_runtime_reason_only(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, b"not an onnx file")
    assert "ONNX Runtime cannot load it" in str(info.value) and "custom operators" not in str(info.value)
