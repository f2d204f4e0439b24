"""The V2 REST API against a real node on a real port, with real clients."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as triton

from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_identity_models, write_model

DATATYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model(seed=1)})
    write_model(root, "linear", 2, {"model.onnx": onnx_linear_model(seed=2)}, config={"version_policy": {"all": True}})
    write_model(root, "broken", 1, {"model.onnx": b"not an onnx file"})
    write_identity_models(root, [*DATATYPES, "BYTES"])
    write_model(root, "spare", 1, {"model.onnx": onnx_linear_model(seed=3)})
    cfg = node_config(
        root, limits={"max_body_bytes": 64 * 1024}, repository={"startup_models": ["linear", "id_*", "broken"]}
    )
    with RunningNode(cfg) as n:
        yield n


def _ort(seed: int, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(onnx_linear_model(seed=seed), providers=["CPUExecutionProvider"])
    return dict(zip(["logits", "probs"], sess.run(None, {"x": x}), strict=True))


def _infer_body(x: np.ndarray, name: str = "x", datatype: str = "FP32", **extra: object) -> dict:
    return {
        "inputs": [{"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.ravel().tolist()}],
        **extra,
    }


def test_health_and_metadata(node: RunningNode) -> None:
    assert requests.get(f"{node.url}/v2/health/live").json() == {"live": True}
    assert requests.get(f"{node.url}/v2/health/ready").json() == {"ready": True}
    meta = requests.get(f"{node.url}/v2").json()
    assert meta["name"] == "dlinfer" and "model_repository" in meta["extensions"]
    model = requests.get(f"{node.url}/v2/models/linear").json()
    assert model["versions"] == ["2"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in model["outputs"]] == ["logits", "probs"]
    assert requests.get(f"{node.url}/v2/models/linear/versions/1").json()["versions"] == ["1"]
    assert requests.get(f"{node.url}/v2/models/linear/ready").status_code == 200
    assert requests.get(f"{node.url}/v2/models/broken/ready").status_code == 400
    cfg = requests.get(f"{node.url}/v2/models/linear/config").json()
    assert cfg["max_batch_size"] == 64 and cfg["version_policy"] == {"all": {}}
    assert cfg["dlinfer"]["version_policy"]["all"] is True  # dlinfer's own form beside the extension's
    assert cfg["optimized"] == []  # no optimize pipeline


def test_infer_matches_onnxruntime(node: RunningNode) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for version, seed in (("1", 1), ("2", 2)):
        r = requests.post(f"{node.url}/v2/models/linear/versions/{version}/infer", json=_infer_body(x, id="req-7"))
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["id"] == "req-7" and doc["model_version"] == version
        expected = _ort(seed, x)
        for out in doc["outputs"]:
            assert out["shape"] == [3, 3] and out["datatype"] == "FP32"
            np.testing.assert_allclose(np.array(out["data"]).reshape(3, 3), expected[out["name"]], rtol=1e-6)


def test_requested_output_subset(node: RunningNode) -> None:
    x = np.ones((1, 4), np.float32)
    doc = requests.post(f"{node.url}/v2/models/linear/infer", json=_infer_body(x, outputs=[{"name": "probs"}])).json()
    assert [o["name"] for o in doc["outputs"]] == ["probs"]


def test_tritonclient_http(node: RunningNode) -> None:
    client = triton.InferenceServerClient(node.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear")
    assert client.get_model_metadata("linear")["name"] == "linear"
    cfg = client.get_model_config("linear")  # the model configuration extension's JSON
    assert cfg["name"] == "linear" and cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 64
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]  # no batch dimension
    assert [o["name"] for o in cfg["output"]] == ["logits", "probs"]
    assert cfg["instance_group"] == [{"name": "linear", "kind": "KIND_CPU", "count": 1}]
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    inp = triton.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [triton.InferRequestedOutput("probs", binary_data=False)]
    result = client.infer("linear", [inp], outputs=outs, model_version="1")
    np.testing.assert_allclose(result.as_numpy("probs"), _ort(1, x)["probs"], rtol=1e-6)
    index = client.get_model_repository_index()
    assert {"name": "spare", "state": "UNAVAILABLE", "reason": "not loaded"} in index


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips(node: RunningNode, datatype: str) -> None:
    rng = np.random.default_rng(2)
    dtype = triton.triton_to_np_dtype(datatype)
    if datatype == "BOOL":
        x = rng.integers(0, 2, (2, 3)).astype(bool)
    elif dtype().dtype.kind in "iu":
        info = np.iinfo(dtype)
        x = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=dtype)
    else:
        x = rng.standard_normal((2, 3)).astype(dtype)
    doc = requests.post(f"{node.url}/v2/models/id_{datatype.lower()}/infer", json=_infer_body(x, datatype=datatype))
    assert doc.status_code == 200, doc.text
    out = doc.json()["outputs"][0]
    assert out["datatype"] == datatype and out["shape"] == [2, 3]
    np.testing.assert_array_equal(np.array(out["data"], dtype=dtype).reshape(2, 3), x)


def test_bytes_round_trip(node: RunningNode) -> None:
    body = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 3], "data": ["a", "héllo", ""]}]}
    out = requests.post(f"{node.url}/v2/models/id_bytes/infer", json=body).json()["outputs"][0]
    assert out == {"name": "y", "datatype": "BYTES", "shape": [1, 3], "data": ["a", "héllo", ""]}


BAD_REQUESTS = [
    ("linear", b"{not json", 400, "malformed JSON"),
    ("linear", b"[1, 2]", 400, "request body must be a JSON object"),
    ("linear", b'{"inputs": []}', 400, "'inputs' is empty"),
    ("linear", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}', 400, "missing 'data'"),
    (
        "linear",
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1,2,3,4]}]}',
        400,
        "datatype FP64 does not match the model's FP32",
    ),
    (
        "linear",
        b'{"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1, 4], "data": [1,2,3,4]}]}',
        400,
        "unsupported datatype 'FLOAT'",
    ),
    (
        "linear",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [1,2,3,4,5]}]}',
        400,
        "shape [1, 5] does not match the model's [-1, 4]",
    ),
    (
        "linear",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1,2,3]}]}',
        400,
        "shape [1, 4] needs 4 elements, but 'data' has 3",
    ),
    (
        "linear",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, -4], "data": [1]}]}',
        400,
        "'shape' must be an array of non-negative integers",
    ),
    (
        "linear",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ["a","b","c","d"]}]}',
        400,
        "datatype FP32 needs numbers, got strings",
    ),
    (
        "linear",
        b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 4], "data": [1,2,3,4]}]}',
        400,
        "model 'linear' has no input 'z'",
    ),
    (
        "linear",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1,2],[3]]}]}',
        400,
        "not a regular array",
    ),
    (
        "linear",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1,2,3,4]}],'
        b' "outputs": [{"name": "nope"}]}',
        400,
        "model 'linear' has no output 'nope'",
    ),
    (
        "id_int8",
        b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1, 3], "data": [1, 2, 300]}]}',
        400,
        "value out of range for INT8",
    ),
    (
        "id_int32",
        b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 3], "data": [1.5, 2, 3]}]}',
        400,
        "datatype INT32 needs integers, got floating-point numbers",
    ),
    (
        "id_bool",
        b'{"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1, 3], "data": [1, 0, 1]}]}',
        400,
        "datatype BOOL needs true/false values",
    ),
    ("nope", b'{"inputs": []}', 404, "unknown model 'nope'"),
    ("broken", b'{"inputs": []}', 503, "model 'broken' is not ready"),
]


@pytest.mark.parametrize(("model", "body", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_clear_errors(node: RunningNode, model: str, body: bytes, status: int, message: str) -> None:
    r = requests.post(f"{node.url}/v2/models/{model}/infer", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    assert message in r.json()["error"]
    # the server keeps serving
    ok = requests.post(f"{node.url}/v2/models/linear/infer", json=_infer_body(np.ones((1, 4), np.float32)))
    assert ok.status_code == 200


def test_unknown_version_and_endpoint(node: RunningNode) -> None:
    r = requests.post(f"{node.url}/v2/models/linear/versions/9/infer", json=_infer_body(np.ones((1, 4), np.float32)))
    assert r.status_code == 404 and "has no version 9 loaded" in r.json()["error"]
    r = requests.get(f"{node.url}/v2/models/linear/versions/abc")
    assert r.status_code == 404 and "invalid version 'abc'" in r.json()["error"]
    r = requests.get(f"{node.url}/v3/everything")
    assert r.status_code == 404 and r.json() == {"error": "no endpoint /v3/everything"}


def test_body_over_limit_is_413(node: RunningNode) -> None:
    x = np.ones((1, 4), np.float32)
    big = _infer_body(x)
    big["inputs"][0]["data"] = [1.0] * 40000
    r = requests.post(f"{node.url}/v2/models/linear/infer", json=big)
    assert r.status_code == 413 and "larger than the limit of 65536 bytes" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ['
        for _ in range(20000):
            yield b"1.0,"
        yield b"1.0]}]}"

    r = requests.post(f"{node.url}/v2/models/linear/infer", data=chunks())
    assert r.status_code == 413
    assert requests.post(f"{node.url}/v2/models/linear/infer", json=_infer_body(x)).status_code == 200


def test_repository_control(node: RunningNode) -> None:
    index = requests.post(f"{node.url}/v2/repository/index").json()
    assert {"name": "spare", "state": "UNAVAILABLE", "reason": "not loaded"} in index
    r = requests.post(f"{node.url}/v2/repository/models/spare/load")
    assert r.status_code == 200, r.text
    x = np.ones((1, 4), np.float32)
    assert requests.post(f"{node.url}/v2/models/spare/infer", json=_infer_body(x)).status_code == 200
    ready = requests.post(f"{node.url}/v2/repository/index", json={"ready": True}).json()
    assert {"name": "spare", "version": "1", "state": "READY", "reason": ""} in ready
    assert requests.post(f"{node.url}/v2/repository/models/spare/unload").status_code == 200
    r = requests.post(f"{node.url}/v2/models/spare/infer", json=_infer_body(x))
    assert r.status_code == 503 and "unloaded" in r.json()["error"]
    r = requests.post(f"{node.url}/v2/repository/models/ghost/load")
    assert r.status_code == 404 and "not in the repository" in r.json()["error"]
    r = requests.post(f"{node.url}/v2/repository/models/broken/load")
    assert r.status_code == 400 and "failed to load" in r.json()["error"]


def test_plugins_endpoint(node: RunningNode) -> None:
    plugins = {p["name"]: p for p in requests.get(f"{node.url}/v2/-/plugins").json()}
    assert plugins["onnx"]["distribution"] == "dlinfer-onnx"
    assert plugins["onnx"]["hooks"] == ["dlinfer_model_formats"]


def test_bytes_that_are_not_utf8_are_a_client_error(node: RunningNode) -> None:
    # JSON strings are always valid text; raw bytes arrive through the binary tensor extension.
    payload = b"".join(len(s).to_bytes(4, "little") + s for s in (b"ok", b"\xff\xfe", b"x"))
    tensor = {"name": "x", "datatype": "BYTES", "shape": [1, 3], "parameters": {"binary_data_size": len(payload)}}
    header = json.dumps({"inputs": [tensor]}).encode()
    r = requests.post(
        f"{node.url}/v2/models/id_bytes/infer",
        data=header + payload,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 400 and "not UTF-8" in r.json()["error"]


def test_curl_default_content_type_is_read_as_json(node: RunningNode) -> None:
    """``curl -d '{...}'`` sends application/x-www-form-urlencoded: the README's example must work."""
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}'
    r = requests.post(
        f"{node.url}/v2/models/linear/infer", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 3]
