"""Tiny real TensorFlow models, built once per test session, and one node serving them.

Models (in a repository under a session temp folder):

- ``cnn``: a Keras CNN saved as ``model.keras`` (input ``image`` [-1, 8, 8, 3]).
- ``multi``: a ``tf.Module`` SavedModel with two signatures: ``serving_default``
  (inputs ``x`` FP32 [-1, 4], ``y`` FP32 [-1, 3], ``label`` BYTES [-1]; outputs
  ``z``, ``n``, ``label_bytes``) and ``scale``. Versions 1 and 2 differ in weights.
- ``multi_scale``: version 1 of ``multi`` configured to serve the ``scale`` signature.
- ``tf1``: a ``tf.compat.v1`` graph saved with ``saved_model.Builder``, with predict,
  classify and regress signatures.
- ``bad_signature``: ``multi`` configured with a signature it lacks (fails to load).
- ``tf1_batched``: ``tf1`` with dynamic batching (4 rows, long queue delay).
- ``linear``: an ONNX model (dlinfer-onnx), to show the TF-Serving API serves any backend.
- ``triton_multi``: version 1 of ``multi`` as a Triton repository has it: ``config.pbtxt`` and
  ``1/model.savedmodel/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlinfer.api import Plugins
from dlinfer.api.testing import RunningNode, node_config, onnx_linear_model, write_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_cnn(path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu")(image)
    h = keras.layers.GlobalAveragePooling2D()(h)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    keras.Model(image, probs).save(path / "model.keras")


def build_multi(path: Path, seed: int) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    class Multi(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(rng.standard_normal((4, 3)).astype(np.float32))

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 4], tf.float32),
                tf.TensorSpec([None, 3], tf.float32),
                tf.TensorSpec([None], tf.string),
            ]
        )
        def serve(self, x: Any, y: Any, label: Any) -> dict[str, Any]:
            return {"z": tf.tanh(x @ self.w + y), "n": tf.strings.length(label), "label_bytes": label}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def scale(self, x: Any) -> dict[str, Any]:
            return {"w": tf.nn.relu(x @ self.w) * 2.0}

    module = Multi()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "scale": module.scale})


def build_tf1(path: Path) -> None:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        w = v1.get_variable("W", initializer=tf.constant(np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)))
        b = v1.get_variable("b", initializer=tf.constant([0.5, -0.25]))
        y = tf.identity(tf.matmul(x, w) + b, name="y")
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([3], tf.float32)})
        logits = tf.matmul(features["x"], w) + b
        classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(serialized)[0], 1])
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(
                sess,
                ["serve"],
                signature_def_map={
                    "serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y}),
                    "classify": v1.saved_model.classification_signature_def(serialized, classes, tf.nn.softmax(logits)),
                    "regress": v1.saved_model.regression_signature_def(
                        serialized, tf.reduce_sum(logits, axis=1, keepdims=True)
                    ),
                },
            )
            builder.save()


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("tf_models")
    build_cnn(write_model(repo, "cnn"))
    build_multi(repo / "multi" / "1", seed=1)
    build_multi(repo / "multi" / "2", seed=2)
    (repo / "multi" / "config.toml").write_text("[version_policy]\nall = true\n")
    shutil.copytree(repo / "multi" / "1", repo / "multi_scale" / "1")
    (repo / "multi_scale" / "config.toml").write_text('[parameters]\nsignature_name = "scale"\n')
    build_tf1(repo / "tf1" / "1")
    shutil.copytree(repo / "multi" / "1", repo / "bad_signature" / "1")
    (repo / "bad_signature" / "config.toml").write_text('[parameters]\nsignature_name = "nope"\n')
    shutil.copytree(repo / "tf1" / "1", repo / "tf1_batched" / "1")
    (repo / "tf1_batched" / "config.toml").write_text(
        "max_batch_size = 4\n[dynamic_batching]\npreferred_batch_size = [4]\nmax_queue_delay_us = 2000000\n"
    )
    write_model(repo, "linear", files={"model.onnx": onnx_linear_model()})
    shutil.copytree(repo / "multi" / "1", repo / "triton_multi" / "1" / "model.savedmodel")
    (repo / "triton_multi" / "config.pbtxt").write_text('platform: "tensorflow_savedmodel"\nmax_batch_size: 8\n')
    return repo


def tf_plugins(config: Any) -> Plugins:
    """The built-ins, this plugin and the ONNX backend only, so the tests do not depend on
    whatever else is installed."""
    import dlinfer_onnx.plugin
    import dlinfer_tf.plugin

    plugins = Plugins(config).load(entry_points=False)
    plugins.register(dlinfer_tf.plugin, "tf", "dlinfer-tf")
    plugins.register(dlinfer_onnx.plugin, "onnx", "dlinfer-onnx")
    return plugins


@pytest.fixture(scope="session")
def node(repository: Path) -> Iterator[RunningNode]:
    config = node_config(repository)
    with RunningNode(config, tf_plugins(config)) as running:
        yield running


@pytest.fixture(scope="session")
def grpc_target(node: RunningNode) -> str:
    return f"{node.config.server.host}:{node.config.server.grpc_port}"


@pytest.fixture(scope="session")
def reference(repository: Path) -> dict[str, Any]:
    """The same models loaded by TensorFlow and Keras in-process, for comparison."""
    import keras
    import tensorflow as tf

    return {
        "cnn": keras.saving.load_model(repository / "cnn" / "1" / "model.keras"),
        "multi": tf.saved_model.load(str(repository / "multi" / "1")),
        "multi_v2": tf.saved_model.load(str(repository / "multi" / "2")),
        "tf1": tf.saved_model.load(str(repository / "tf1" / "1")),
    }


def tf_call(model: Any, signature: str = "serving_default", **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of a SavedModel signature, as numpy."""
    return {k: v.numpy() for k, v in model.signatures[signature](**inputs).items()}


@pytest.fixture(scope="session")
def call_tf() -> Any:
    return tf_call
