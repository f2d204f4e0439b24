"""SavedModel (TF2 and TF1) and Keras loading: tensors from the signature, config, safety, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import requests

from dlinfer.api import ModelConfig, ModelLoadError, NodeConfig
from dlinfer_tf.loader import KerasLoader, SavedModelLoader


def _metadata(node, name: str) -> dict:
    r = requests.get(f"{node.url}/v2/models/{name}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_savedmodel_tensors_come_from_the_signature(node):
    meta = _metadata(node, "multi")
    assert meta["platform"] == "tensorflow_savedmodel"
    assert sorted((t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]) == [
        ("label", "BYTES", [-1]),
        ("x", "FP32", [-1, 4]),
        ("y", "FP32", [-1, 3]),
    ]
    assert sorted((t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]) == [
        ("label_bytes", "BYTES", [-1]),
        ("n", "INT32", [-1]),
        ("z", "FP32", [-1, 3]),
    ]


def test_signature_name_from_config(node):
    meta = _metadata(node, "multi_scale")
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("x", [-1, 4])]
    assert [t["name"] for t in meta["outputs"]] == ["w"]


def test_tf1_compat_savedmodel(node):
    meta = _metadata(node, "tf1")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]


def test_keras_model(node):
    meta = _metadata(node, "cnn")
    assert meta["platform"] == "tensorflow_keras"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 3]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]}]


def test_missing_signature_is_reported_and_others_serve(node):
    index = requests.post(f"{node.url}/v2/repository/index", timeout=10).json()
    bad = [row for row in index if row["name"] == "bad_signature"]
    assert bad and bad[0]["state"] == "UNAVAILABLE"
    assert "no signature 'nope'" in bad[0]["reason"] and "serving_default" in bad[0]["reason"]
    assert all(row["state"] == "READY" for row in index if row["name"] != "bad_signature")


def test_triton_layout(node, repository, reference, call_tf):
    """A Triton repository's SavedModel (config.pbtxt, 1/model.savedmodel/) serves unchanged."""
    assert SavedModelLoader.detect(repository / "triton_multi" / "1") == "savedmodel"
    meta = _metadata(node, "triton_multi")
    assert meta["platform"] == "tensorflow_savedmodel" and {t["name"] for t in meta["inputs"]} == {"x", "y", "label"}
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = np.ones((2, 3), np.float32)
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()},
            {"name": "y", "datatype": "FP32", "shape": [2, 3], "data": y.ravel().tolist()},
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
        ],
        "outputs": [{"name": "z"}],
    }
    r = requests.post(f"{node.url}/v2/models/triton_multi/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    z = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 3)
    expected = call_tf(reference["multi"], x=x, y=y, label=np.array([b"a", b"b"]))["z"]
    np.testing.assert_allclose(z, expected, rtol=1e-5)


def test_detect(repository):
    assert SavedModelLoader.detect(repository / "multi" / "1") == "savedmodel"
    assert SavedModelLoader.detect(repository / "cnn" / "1") is None
    assert KerasLoader.detect(repository / "cnn" / "1") == "keras"
    assert KerasLoader.detect(repository / "tf1" / "1") is None


def test_bad_files_are_load_errors(tmp_path):
    loader = SavedModelLoader(NodeConfig())
    with pytest.raises(ModelLoadError, match=r"no saved_model\.pb"):
        loader.load(ModelConfig(), tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"\x07not a protobuf")
    with pytest.raises(ModelLoadError, match=r"saved_model\.pb"):
        loader.load(ModelConfig(), tmp_path)
    (tmp_path / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="Keras cannot load it"):
        KerasLoader(NodeConfig()).load(ModelConfig(), tmp_path)
    with pytest.raises(ModelLoadError, match="plain file name"):
        KerasLoader(NodeConfig()).load(ModelConfig(parameters={"filename": "../model.keras"}), tmp_path)


def test_keras_code_in_the_file_needs_allow_pickle(tmp_path):
    """A Lambda layer carries Python bytecode: refused unless the model opts in."""
    import keras
    import numpy as np

    inp = keras.Input((2,), name="x")
    out = keras.layers.Lambda(lambda t: t * 3.0, name="triple")(inp)
    keras.Model(inp, out).save(tmp_path / "model.keras")
    loader = KerasLoader(NodeConfig())
    with pytest.raises(ModelLoadError, match=r"(?i)unsafe|safe_mode"):
        loader.load(ModelConfig(), tmp_path)
    runner = loader.load(ModelConfig(allow_pickle=True), tmp_path)
    out = runner.predict({"x": np.array([[1.0, 2.0]], dtype=np.float32)})
    np.testing.assert_allclose(out["triple"], [[3.0, 6.0]])
    runner.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "threads 1 2 1"),  # from node.toml
        ({"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "1"}, "threads 2 1 1"),  # the environment wins
    ],
)
def test_threads_and_onednn_are_set_before_tensorflow_starts(repository, environ, expected):
    """TF thread pools are process-wide: the loader sets them from node.toml on first use."""
    code = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from dlinfer.config import node_config_from_dict
        from dlinfer.model import ModelConfig
        from dlinfer_tf.loader import SavedModelLoader

        config = node_config_from_dict({"threads": {"intra_op": 1, "inter_op": 2}})
        SavedModelLoader(config).load(ModelConfig(), Path(sys.argv[1]))
        import tensorflow as tf

        print("threads", tf.config.threading.get_intra_op_parallelism_threads(),
              tf.config.threading.get_inter_op_parallelism_threads(), os.environ["TF_ENABLE_ONEDNN_OPTS"])
        """
    )
    drop = ("TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
    env = {**{k: v for k, v in os.environ.items() if k not in drop}, **environ}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(repository / "tf1" / "1")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expected in proc.stdout


def test_node_starts_without_importing_tensorflow(tmp_path):
    """The plugin's hooks (routes, gRPC services) load nothing heavy until a model or request needs it."""
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import requests
        import dlinfer_tf.plugin
        from dlinfer.plugins import Plugins
        from dlinfer.testing import RunningNode, node_config

        config = node_config(Path(sys.argv[1]))
        plugins = Plugins(config).load(entry_points=False)
        plugins.register(dlinfer_tf.plugin, "tf", "dlinfer-tf")
        with RunningNode(config, plugins) as node:
            ready = requests.get(node.url + "/v2/health/ready", timeout=10).status_code
            missing = requests.get(node.url + "/v1/models/nothing", timeout=10)
            print("ready", ready, missing.status_code, "error" in missing.json())
            print("tensorflow imported:", any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ready 200 404 True" in proc.stdout
    assert "tensorflow imported: False" in proc.stdout


def test_plugin_reports_itself_available(node):
    plugins = requests.get(f"{node.url}/v2/-/plugins", timeout=10).json()
    tf_plugin = next(p for p in plugins if p["name"] == "tf")
    assert tf_plugin["status"] == "loaded"
    assert {"dlinfer_model_formats", "dlinfer_converters", "dlinfer_routes", "dlinfer_grpc_services"} <= set(
        tf_plugin["hooks"]
    )


def test_keras_multi_input_multi_output(tmp_path):
    import keras
    import numpy as np

    keras.utils.set_random_seed(1)
    a = keras.Input((4,), name="a")
    b = keras.Input((2,), name="b", dtype="int32")
    joined = keras.layers.Concatenate()([a, keras.layers.Embedding(5, 3)(b)[:, 0, :]])
    head = keras.layers.Dense(3, name="head")(joined)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(joined)
    model = keras.Model([a, b], [head, score])
    model.save(tmp_path / "two.keras")

    runner = KerasLoader(NodeConfig()).load(ModelConfig(), tmp_path)
    assert [(t.name, t.datatype, t.shape) for t in runner.inputs] == [("a", "FP32", (-1, 4)), ("b", "INT32", (-1, 2))]
    assert [(t.name, t.shape) for t in runner.outputs] == [("head", (-1, 3)), ("score", (-1, 1))]
    rng = np.random.default_rng(0)
    xa = rng.standard_normal((3, 4)).astype(np.float32)
    xb = rng.integers(0, 5, (3, 2)).astype(np.int32)
    got = runner.predict({"a": xa, "b": xb})
    want = model([xa, xb])
    np.testing.assert_allclose(got["head"], want[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["score"], want[1].numpy(), atol=1e-5)
    runner.close()
