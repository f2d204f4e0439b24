"""The torch path: a real TinyCNN served through a node after each optimizer."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch_testing = pytest.importorskip("dlinfer_torch.testing")

X = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)

STATE_DICT_CONFIG = {
    "format": "pytorch_state_dict",
    "max_batch_size": 8,
    "input": [{"name": "image", "datatype": "FP32", "shape": [3, 16, 16]}],
    "output": [{"name": "logits", "datatype": "FP32", "shape": [5]}],
    "parameters": {"model_class": "dlinfer_torch.testing:TinyCNN"},
}


@pytest.fixture
def cnn() -> torch.nn.Module:
    return torch_testing.make(torch_testing.TinyCNN, seed=1)


def eager(module: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(X)).numpy()


def write_state_dict(repository: Path, module: torch.nn.Module, optimize: list[str], **extra: object) -> None:
    vdir = repository / "cnn" / "1"
    vdir.mkdir(parents=True)
    torch_testing.save_state_dict(module, vdir / "model.pt")
    import tomli_w

    (repository / "cnn" / "config.toml").write_text(tomli_w.dumps({**STATE_DICT_CONFIG, "optimize": optimize, **extra}))


@pytest.mark.parametrize(
    ("pipeline", "platform"),
    [
        (["threads", "torchscript-freeze"], "pytorch_eager"),
        (["onnxruntime"], "onnxruntime_onnx"),
        (["openvino"], "openvino"),
    ],
)
def test_eager_torch_model_optimized_and_served(
    dlinfer_server, dlinfer_repository: Path, cnn, pipeline: list[str], platform: str, caplog
) -> None:
    write_state_dict(dlinfer_repository, cnn, pipeline)
    with caplog.at_level(logging.INFO, logger="dlinfer.optimize"):
        node = dlinfer_server()
    applied = [m for m in (r.getMessage() for r in caplog.records) if "applied" in m]
    assert [p for p in pipeline if any(f"optimizer {p} applied" in m for m in applied)] == pipeline
    assert node.client.metadata("cnn")["platform"] == platform
    got = node.client.infer("cnn", {"image": X})["logits"]
    np.testing.assert_allclose(got, eager(cnn), rtol=1e-5, atol=1e-5)


def test_torchscript_freeze_on_a_scripted_model(dlinfer_server, dlinfer_repository: Path, cnn) -> None:
    vdir = dlinfer_repository / "cnn" / "1"
    vdir.mkdir(parents=True)
    torch_testing.save_torchscript(cnn, vdir / "model.pt")
    import tomli_w

    config = {k: v for k, v in STATE_DICT_CONFIG.items() if k not in ("format", "parameters")}
    config["optimize"] = ["torchscript-freeze"]
    config["optimize_options"] = {"torchscript-freeze": {"channels_last": False}}
    (dlinfer_repository / "cnn" / "config.toml").write_text(tomli_w.dumps(config))
    node = dlinfer_server()
    np.testing.assert_allclose(node.client.infer("cnn", {"image": X})["logits"], eager(cnn), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_only_when_asked(dlinfer_server, dlinfer_repository: Path, cnn) -> None:
    write_state_dict(dlinfer_repository, cnn, ["bf16"])
    node = dlinfer_server()
    got = node.client.infer("cnn", {"image": X})["logits"]
    assert got.dtype == np.float32
    assert not np.array_equal(got, eager(cnn))  # bf16 math really ran
    np.testing.assert_allclose(got, eager(cnn), atol=0.1, rtol=0.1)
    assert (got.argmax(-1) == eager(cnn).argmax(-1)).all()
