"""TF-Serving's gRPC API through the real ``tensorflow-serving-api`` client stubs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def channel(grpc_target):
    with grpc.insecure_channel(grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _predict(name: str, version: int | None = None, signature: str = "", **inputs: np.ndarray):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    req.model_spec.signature_name = signature
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return req


def _example(x: list[float]) -> tf.train.Example:
    return tf.train.Example(
        features=tf.train.Features(feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=x))})
    )


def test_predict(stub, reference, call_tf):
    x = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    resp = stub.Predict(_predict("tf1", x=x), timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["y"]), call_tf(reference["tf1"], x=x)["y"], atol=ATOL)
    assert (resp.model_spec.name, resp.model_spec.version.value) == ("tf1", 1)
    assert resp.model_spec.signature_name == "serving_default"


def test_predict_strings_version_and_output_filter(stub, reference, call_tf):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    y = rng.standard_normal((2, 3)).astype(np.float32)
    label = np.array([b"\xffraw", b"text"], dtype=object)
    req = _predict("multi", 1, x=x, y=y, label=label)
    req.output_filter.extend(["z", "label_bytes"])
    resp = stub.Predict(req, timeout=30)
    assert set(resp.outputs) == {"z", "label_bytes"}
    expected = call_tf(reference["multi"], x=x, y=y, label=label)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["z"]), expected["z"], atol=ATOL)
    assert tf.make_ndarray(resp.outputs["label_bytes"]).tolist() == label.tolist()
    assert resp.model_spec.version.value == 1


def test_predict_named_signature(stub, reference, call_tf):
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    resp = stub.Predict(_predict("multi", 2, "scale", x=x), timeout=30)
    np.testing.assert_allclose(
        tf.make_ndarray(resp.outputs["w"]), call_tf(reference["multi_v2"], "scale", x=x)["w"], atol=ATOL
    )
    assert resp.model_spec.signature_name == "scale"


def test_keras_predict(stub, reference):
    x = np.random.default_rng(3).random((2, 8, 8, 3), dtype=np.float32)
    resp = stub.Predict(_predict("cnn", image=x), timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["probs"]), reference["cnn"](x).numpy(), atol=ATOL)


def test_classify_and_regress(stub, reference, call_tf):
    xs = [[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]
    serialized = np.array([_example(x).SerializeToString() for x in xs], dtype=object)
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "tf1"
    req.model_spec.signature_name = "classify"
    req.input.example_list.examples.extend(_example(x) for x in xs)
    resp = stub.Classify(req, timeout=30)
    expected = call_tf(reference["tf1"], "classify", inputs=serialized)["scores"]
    got = [[(c.label, c.score) for c in cl.classes] for cl in resp.result.classifications]
    assert [[label for label, _ in row] for row in got] == [["neg", "pos"]] * 2
    np.testing.assert_allclose([[s for _, s in row] for row in got], expected, atol=ATOL)

    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "tf1"
    req.model_spec.signature_name = "regress"
    req.input.example_list_with_context.context.CopyFrom(_example(xs[0]))
    req.input.example_list_with_context.examples.add()  # all features from the context
    req.input.example_list_with_context.examples.append(_example(xs[1]))
    resp = stub.Regress(req, timeout=30)
    expected = call_tf(reference["tf1"], "regress", inputs=serialized)["outputs"].reshape(-1)
    np.testing.assert_allclose([r.value for r in resp.result.regressions], expected, atol=ATOL)


def test_metadata(stub):
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "tf1"
    req.metadata_field.append("signature_def")
    resp = stub.GetModelMetadata(req, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sig_map)
    defs = sig_map.signature_def
    assert set(defs) == {"serving_default", "classify", "regress"}
    assert defs["classify"].method_name == "tensorflow/serving/classify"
    assert defs["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in defs["serving_default"].outputs["y"].tensor_shape.dim] == [-1, 2]


def test_model_status(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "multi"
    resp = stub.GetModelStatus(req, timeout=30)
    states = [(s.version, s.state) for s in resp.model_version_status]
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states == [(1, available), (2, available)]
    req.model_spec.name = "bad_signature"
    bad = stub.GetModelStatus(req, timeout=30).model_version_status[0]
    assert bad.state == get_model_status_pb2.ModelVersionStatus.END
    assert "nope" in bad.status.error_message and bad.status.error_code != 0


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (lambda: _predict("tf1", signature="nope", x=np.zeros((1, 3), np.float32)), "INVALID_ARGUMENT", "nope"),
        (lambda: _predict("tf1", x=np.zeros((1, 3), np.float64)), "INVALID_ARGUMENT", "FP64"),
        (lambda: _predict("tf1", wrong=np.zeros((1, 3), np.float32)), "INVALID_ARGUMENT", "no input 'wrong'"),
        (lambda: _predict("nosuchmodel", x=np.zeros((1, 3), np.float32)), "NOT_FOUND", "unknown model"),
        (lambda: _predict("tf1", 9, x=np.zeros((1, 3), np.float32)), "NOT_FOUND", "no version 9"),
    ],
)
def test_errors_keep_the_server_serving(stub, request_, code, message):
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request_(), timeout=30)
    assert info.value.code() == grpc.StatusCode[code]
    assert message in info.value.details()
    ok = stub.Predict(_predict("tf1", x=np.ones((1, 3), np.float32)), timeout=30)
    assert tf.make_ndarray(ok.outputs["y"]).shape == (1, 2)


def test_malformed_message_is_invalid_argument(channel):
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff", timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
