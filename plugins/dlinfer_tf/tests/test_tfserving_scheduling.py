"""TF-Serving requests share the V2 path: the scheduler batches them, metrics count them,
and models of any backend answer them."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

ATOL = 1e-5


def _metric(text: str, name: str, model: str) -> float:
    pattern = rf'^{name}(?:_total)?\{{[^}}]*model="{model}"[^}}]*\}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def test_rest_and_grpc_requests_are_batched_together(node, grpc_target, reference, call_tf):
    rows = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    channel = grpc.insecure_channel(grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def rest(i: int) -> np.ndarray:
        r = requests.post(
            f"{node.url}/v1/models/tf1_batched:predict", json={"instances": [rows[i].tolist()]}, timeout=30
        )
        assert r.status_code == 200, r.text
        return np.array(r.json()["predictions"][0])

    def grpc_call(i: int) -> np.ndarray:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "tf1_batched"
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(rows[i : i + 1]))
        return tf.make_ndarray(stub.Predict(req, timeout=30).outputs["y"])[0]

    # The batch leaves when its 4 rows are queued (the preferred size), long before the 2 s delay.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: (rest if i % 2 else grpc_call)(i), range(4)))
    channel.close()
    np.testing.assert_allclose(np.stack(results), call_tf(reference["tf1"], x=rows)["y"], atol=ATOL)
    metrics = requests.get(f"{node.url}/metrics", timeout=10).text
    assert _metric(metrics, "dlinfer_inference_request_success", "tf1_batched") == 4
    assert _metric(metrics, "dlinfer_inference_count", "tf1_batched") == 4
    assert _metric(metrics, "dlinfer_inference_exec_count", "tf1_batched") < 4


def test_onnx_model_over_tfserving(node, grpc_target):
    import onnxruntime as ort

    from dlinfer.api.testing import onnx_linear_model

    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    session = ort.InferenceSession(onnx_linear_model(), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probs"], {"x": x})
    r = requests.post(f"{node.url}/v1/models/linear:predict", json={"instances": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    np.testing.assert_allclose([row["probs"] for row in rows], probs, atol=ATOL)
    np.testing.assert_allclose([row["logits"] for row in rows], logits, atol=ATOL)

    meta = requests.get(f"{node.url}/v1/models/linear/metadata", timeout=10).json()
    default = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert set(default["outputs"]) == {"logits", "probs"}

    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "linear"
    req.metadata_field.append("signature_def")
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    with grpc.insecure_channel(grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.GetModelMetadata(req, timeout=30).metadata["signature_def"].Unpack(sig_map)
    assert [d.size for d in sig_map.signature_def["serving_default"].inputs["x"].tensor_shape.dim] == [-1, 4]
    bad = requests.post(
        f"{node.url}/v1/models/linear:predict", json={"signature_name": "other", "instances": x.tolist()}, timeout=30
    )
    assert bad.status_code == 400 and "other" in bad.json()["error"]


def test_other_signatures_are_counted_under_the_model(node):
    before = _metric(requests.get(f"{node.url}/metrics", timeout=10).text, "dlinfer_inference_request_success", "multi")
    body = {"signature_name": "scale", "instances": [[1.0, 2.0, 3.0, 4.0]]}
    for _ in range(3):
        assert requests.post(f"{node.url}/v1/models/multi:predict", json=body, timeout=30).status_code == 200
    after = _metric(requests.get(f"{node.url}/metrics", timeout=10).text, "dlinfer_inference_request_success", "multi")
    assert after - before == 3
