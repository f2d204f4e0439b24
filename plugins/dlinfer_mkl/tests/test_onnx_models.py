"""Each optimizer turns a real ONNX model into a servable one, checked through a real node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dlinfer.api.testing import onnx_linear_model, write_model

X = np.random.default_rng(7).standard_normal((3, 3, 8, 8)).astype(np.float32)


def reference(model: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": x}), strict=True))


@pytest.mark.parametrize(
    ("pipeline", "platform"),
    [
        (["threads"], "onnxruntime_onnx"),
        (["onnxruntime"], "onnxruntime_onnx"),
        (["openvino"], "openvino"),
        (["threads", "openvino"], "openvino"),
    ],
)
def test_full_precision_optimizers_serve_the_same_results(
    dlinfer_server, dlinfer_repository: Path, conv_onnx: bytes, pipeline: list[str], platform: str
) -> None:
    write_model(dlinfer_repository, "conv", 1, {"model.onnx": conv_onnx}, {"optimize": pipeline})
    node = dlinfer_server()
    assert node.client.metadata("conv")["platform"] == platform
    got = node.client.infer("conv", {"x": X})["logits"]
    np.testing.assert_allclose(got, reference(conv_onnx, X)["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pipeline", [["int8"], ["bf16"], ["openvino", "bf16"]])
def test_reduced_precision_is_served_when_asked(
    dlinfer_server, dlinfer_repository: Path, conv_onnx: bytes, pipeline: list[str]
) -> None:
    write_model(dlinfer_repository, "conv", 1, {"model.onnx": conv_onnx}, {"optimize": pipeline})
    node = dlinfer_server()
    expected = reference(conv_onnx, X)["logits"]
    got = node.client.infer("conv", {"x": X})["logits"]
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=0.1, rtol=0.1)
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    # Reduced precision really ran: the results are not bit-identical to f32.
    assert not np.array_equal(got, expected)


def test_dynamic_int8_on_a_model_without_convolutions(dlinfer_server, dlinfer_repository: Path) -> None:
    model = onnx_linear_model(16, 8, seed=3)
    write_model(dlinfer_repository, "lin", 1, {"model.onnx": model}, {"optimize": ["int8"]})
    node = dlinfer_server()
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    got = node.client.infer("lin", {"x": x})
    expected = reference(model, x)
    np.testing.assert_allclose(got["probs"], expected["probs"], atol=0.1)
    assert (got["logits"].argmax(-1) == expected["logits"].argmax(-1)).all()


def test_onnxruntime_saves_the_optimized_graph_when_asked(
    dlinfer_server, dlinfer_repository: Path, conv_onnx: bytes
) -> None:
    vdir = write_model(
        dlinfer_repository,
        "conv",
        1,
        {"model.onnx": conv_onnx},
        {"optimize": ["onnxruntime"], "optimize_options": {"onnxruntime": {"optimized_model": "model.opt.onnx"}}},
    )
    node = dlinfer_server()
    node.client.infer("conv", {"x": X})
    saved = vdir / "model.opt.onnx"
    assert saved.is_file()
    np.testing.assert_allclose(
        reference(saved.read_bytes(), X)["logits"], reference(conv_onnx, X)["logits"], rtol=1e-5, atol=1e-5
    )
