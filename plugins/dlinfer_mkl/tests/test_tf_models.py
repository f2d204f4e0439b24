"""The TensorFlow path: a Keras model exported by dlinfer-tf's tf2onnx converter, then optimized."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("dlinfer_tf")

X = np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype(np.float32)


def build_keras(vdir: Path) -> keras.Model:
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu")(image)
    h = keras.layers.GlobalAveragePooling2D()(h)
    logits = keras.layers.Dense(3, name="logits")(h)
    model = keras.Model(image, logits)
    vdir.mkdir(parents=True)
    model.save(vdir / "model.keras")
    return model


def test_keras_model_through_onnx_into_openvino(dlinfer_server, dlinfer_repository: Path) -> None:
    import tomli_w

    model = build_keras(dlinfer_repository / "kcnn" / "1")
    (dlinfer_repository / "kcnn" / "config.toml").write_text(tomli_w.dumps({"optimize": ["openvino"]}))
    node = dlinfer_server()
    meta = node.client.metadata("kcnn")
    assert meta["platform"] == "openvino"
    name = meta["inputs"][0]["name"]
    out = node.client.infer("kcnn", {name: X})
    np.testing.assert_allclose(next(iter(out.values())), model(X).numpy(), rtol=1e-5, atol=1e-5)
