"""TF-Serving's REST API, as existing TF-Serving clients call it, compared with TensorFlow in-process."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

ATOL = 1e-5


def _post(node, path: str, body) -> requests.Response:
    kw = {"data": body} if isinstance(body, bytes) else {"json": body}
    return requests.post(f"{node.url}/v1/models/{path}", timeout=30, **kw)


def _ok(r: requests.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def _example(x: list[float]) -> bytes:
    import tensorflow as tf

    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=x))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_predict_row_format(node, reference, call_tf):
    x = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    doc = _ok(_post(node, "tf1:predict", {"instances": x.tolist()}))
    np.testing.assert_allclose(doc["predictions"], call_tf(reference["tf1"], x=x)["y"], atol=ATOL)


def test_predict_columnar_format(node, reference, call_tf):
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    expected = call_tf(reference["tf1"], x=x)["y"]
    bare = _ok(_post(node, "tf1:predict", {"inputs": x.tolist()}))
    named = _ok(_post(node, "tf1/versions/1:predict", {"inputs": {"x": x.tolist()}}))
    np.testing.assert_allclose(bare["outputs"], expected, atol=ATOL)
    np.testing.assert_allclose(named["outputs"], expected, atol=ATOL)


def test_keras_row_format(node, reference):
    x = np.random.default_rng(2).random((2, 8, 8, 3), dtype=np.float32)
    doc = _ok(_post(node, "cnn:predict", {"instances": x.tolist()}))
    np.testing.assert_allclose(doc["predictions"], reference["cnn"](x).numpy(), atol=ATOL)


def test_multi_input_rows_with_b64_and_versions(node, reference, call_tf):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    y = rng.standard_normal((2, 3)).astype(np.float32)
    labels = [b"\x00\x01binary", "café".encode()]
    instances = [
        {"x": x[0].tolist(), "y": y[0].tolist(), "label": {"b64": base64.b64encode(labels[0]).decode()}},
        {"x": x[1].tolist(), "y": y[1].tolist(), "label": "café"},
    ]
    for version, ref in (("1", "multi"), ("2", "multi_v2")):
        doc = _ok(_post(node, f"multi/versions/{version}:predict", {"instances": instances}))
        expected = call_tf(reference[ref], x=x, y=y, label=np.array(labels, dtype=object))
        rows = doc["predictions"]
        assert len(rows) == 2 and set(rows[0]) == {"z", "n", "label_bytes"}
        np.testing.assert_allclose([r["z"] for r in rows], expected["z"], atol=ATOL)
        assert [r["n"] for r in rows] == expected["n"].tolist()
        # outputs named *_bytes come back base64-encoded, as TF-Serving does
        assert [base64.b64decode(r["label_bytes"]["b64"]) for r in rows] == labels
    latest = _ok(_post(node, "multi:predict", {"instances": instances}))
    np.testing.assert_allclose(
        [r["z"] for r in latest["predictions"]],
        call_tf(reference["multi_v2"], x=x, y=y, label=np.array(labels, dtype=object))["z"],
        atol=ATOL,
    )


def test_multi_input_columnar(node, reference, call_tf):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = rng.standard_normal((3, 3)).astype(np.float32)
    body = {"inputs": {"x": x.tolist(), "y": y.tolist(), "label": ["a", "bb", "ccc"]}}
    doc = _ok(_post(node, "multi/versions/1:predict", body))
    expected = call_tf(reference["multi"], x=x, y=y, label=np.array([b"a", b"bb", b"ccc"], dtype=object))
    np.testing.assert_allclose(doc["outputs"]["z"], expected["z"], atol=ATOL)
    assert doc["outputs"]["n"] == [1, 2, 3]


def test_signature_name_selects_another_signature(node, reference, call_tf):
    x = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    doc = _ok(_post(node, "multi/versions/1:predict", {"signature_name": "scale", "instances": x.tolist()}))
    np.testing.assert_allclose(doc["predictions"], call_tf(reference["multi"], "scale", x=x)["w"], atol=ATOL)


def test_classify(node, reference, call_tf):
    xs = [[1.0, 2.0, 3.0], [-1.5, 0.5, 2.0]]
    body = {"signature_name": "classify", "examples": [{"x": xs[0]}, {"x": xs[1]}]}
    doc = _ok(_post(node, "tf1:classify", body))
    expected = call_tf(reference["tf1"], "classify", inputs=np.array([_example(x) for x in xs], dtype=object))
    assert [[label for label, _ in row] for row in doc["result"]] == [["neg", "pos"], ["neg", "pos"]]
    np.testing.assert_allclose([[s for _, s in row] for row in doc["result"]], expected["scores"], atol=ATOL)


def test_regress_with_context(node, reference, call_tf):
    body = {"signature_name": "regress", "context": {"x": [0.5, 0.5, 0.5]}, "examples": [{}, {"x": [1.0, 2.0, 3.0]}]}
    doc = _ok(_post(node, "tf1:regress", body))
    serialized = np.array([_example([0.5, 0.5, 0.5]), _example([1.0, 2.0, 3.0])], dtype=object)
    expected = call_tf(reference["tf1"], "regress", inputs=serialized)["outputs"].reshape(-1)
    np.testing.assert_allclose(doc["result"], expected, atol=ATOL)


def test_status(node):
    r = requests.get(f"{node.url}/v1/models/multi", timeout=10)
    assert r.status_code == 200
    statuses = r.json()["model_version_status"]
    assert [(s["version"], s["state"], s["status"]["error_code"]) for s in statuses] == [
        ("1", "AVAILABLE", "OK"),
        ("2", "AVAILABLE", "OK"),
    ]
    one = requests.get(f"{node.url}/v1/models/multi/versions/2", timeout=10).json()
    assert [s["version"] for s in one["model_version_status"]] == ["2"]
    bad = requests.get(f"{node.url}/v1/models/bad_signature", timeout=10).json()["model_version_status"]
    assert bad[0]["state"] == "END" and "no signature 'nope'" in bad[0]["status"]["error_message"]


def test_metadata(node):
    doc = requests.get(f"{node.url}/v1/models/multi/versions/1/metadata", timeout=10).json()
    assert doc["model_spec"] == {"name": "multi", "signature_name": "", "version": "1"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "scale"}
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["label"]["dtype"] == "DT_STRING"
    assert [d["size"] for d in default["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "4"]
    keras_doc = requests.get(f"{node.url}/v1/models/cnn/metadata", timeout=10).json()
    image = keras_doc["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["image"]
    assert image["dtype"] == "DT_FLOAT" and len(image["tensor_shape"]["dim"]) == 4


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("tf1:predict", {"signature_name": "nope", "instances": [[1, 2, 3]]}, 400, "signature name: 'nope'"),
        ("tf1:predict", {"inputs": {"wrong": [[1, 2, 3]]}}, 400, "no input 'wrong'"),
        ("tf1:predict", {"instances": [["a", "b", "c"]]}, 400, "needs numbers"),
        ("tf1:predict", {"instances": [[1, 2, 3], [1, 2]]}, 400, "regular"),
        ("tf1:predict", {"instances": [[1, 2]]}, 400, "shape"),
        ("tf1:predict", {"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]}, 400, "exactly one"),
        ("tf1:predict", b"{not json", 400, "malformed JSON"),
        ("multi:predict", {"instances": [{"x": [1, 2, 3, 4], "y": [1, 2, 3], "label": 5}]}, 400, "strings"),
        ("multi:predict", {"instances": [{"x": [1, 2, 3, 4], "y": [1, 2, 3], "label": {"b64": "%%"}}]}, 400, "base64"),
        ("multi:predict", {"instances": [[1, 2, 3, 4]]}, 400, "must name each"),
        ("tf1:classify", {"examples": [{"x": [1.0, 2.0, 3.0]}]}, 400, "tensorflow/serving/classify"),
        ("tf1:regress", {"signature_name": "classify", "examples": [{"x": [1.0, 2.0, 3.0]}]}, 400, "regress"),
        ("nosuchmodel:predict", {"instances": [[1, 2, 3]]}, 404, "unknown model"),
        ("tf1/versions/7:predict", {"instances": [[1, 2, 3]]}, 404, "no version 7"),
        ("bad_signature:predict", {"instances": [[1, 2, 3]]}, 503, "not ready"),
    ],
)
def test_errors_are_tfserving_style_and_the_server_keeps_serving(node, path, body, status, message):
    r = _post(node, path, body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and message in r.json()["error"]
    assert _post(node, "tf1:predict", {"instances": [[1, 2, 3]]}).status_code == 200


def test_reload_closes_and_replaces_other_signatures(node):
    body = {"signature_name": "classify", "examples": [{"x": [1.0, 2.0, 3.0]}]}
    before = _ok(_post(node, "tf1:classify", body))["result"]
    r = requests.post(f"{node.url}/v2/repository/models/tf1/load", timeout=60)
    assert r.status_code == 200, r.text
    assert _ok(_post(node, "tf1:classify", body))["result"] == before
    assert _ok(_post(node, "tf1:predict", {"instances": [[1, 2, 3]]}))["predictions"]


def test_json_parsing_leaves_the_garbage_collector_on(node):
    """Bodies are parsed with the cyclic GC paused (see json_codec.loads); it must come back on."""
    import gc

    assert _post(node, "tf1:predict", b'{"instances": [[1, 2, 3]').status_code == 400
    assert gc.isenabled()
    assert _post(node, "tf1:predict", {"instances": [[1, 2, 3]]}).status_code == 200
    assert gc.isenabled()


def test_non_finite_values_are_nan_and_infinity_tokens(node, reference, call_tf):
    """As TF-Serving does: NaN and infinities are read and written as ``NaN``/``Infinity``/``-Infinity``,
    never turned into null."""
    import json

    x = np.array([[np.nan, 0, 0], [np.inf, 0, 0], [0, 0, np.inf], [1, 2, 3]], np.float32)
    expected = call_tf(reference["tf1"], x=x)["y"]
    for key, answer in (("instances", "predictions"), ("inputs", "outputs")):
        r = _post(node, "tf1:predict", json.dumps({key: x.tolist()}).encode())
        assert r.status_code == 200 and b"null" not in r.content, r.text
        assert b"NaN" in r.content and b"-Infinity" in r.content
        np.testing.assert_array_equal(np.array(json.loads(r.content)[answer], np.float32), expected)
    examples = b'"examples": [{"x": [NaN, 0.0, 0.0]}, {"x": [0.0, 0.0, Infinity]}, {"x": [1.0, 2.0, 3.0]}]}'
    regress = _post(node, "tf1:regress", b'{"signature_name": "regress", ' + examples)
    assert regress.status_code == 200 and b"null" not in regress.content, regress.text
    assert np.isnan(json.loads(regress.content)["result"][0]) and json.loads(regress.content)["result"][1] == np.inf
    classify = _post(node, "tf1:classify", b'{"signature_name": "classify", ' + examples)
    assert classify.status_code == 200 and b"null" not in classify.content, classify.text
    assert np.isnan(json.loads(classify.content)["result"][0][0][1])
