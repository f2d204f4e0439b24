"""The TensorFlow models over the V2 protocol (tritonclient), compared with TensorFlow in-process."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient

ATOL = 1e-5


@pytest.fixture(scope="module")
def client(node):
    c = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    yield c
    c.close()


def _input(name: str, arr: np.ndarray, datatype: str) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=True)
    return inp


def test_keras_cnn(client, reference):
    x = np.random.default_rng(0).random((3, 8, 8, 3), dtype=np.float32)
    result = client.infer("cnn", [_input("image", x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("probs"), reference["cnn"](x).numpy(), atol=ATOL)


@pytest.mark.parametrize("version", ["1", "2"])
def test_multi_input_savedmodel(client, reference, call_tf, version):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    y = rng.standard_normal((2, 3)).astype(np.float32)
    label = np.array([b"cat", b"\x00\xffbin"], dtype=object)
    result = client.infer(
        "multi",
        [_input("x", x, "FP32"), _input("y", y, "FP32"), _input("label", label, "BYTES")],
        model_version=version,
    )
    expected = call_tf(reference["multi" if version == "1" else "multi_v2"], x=x, y=y, label=label)
    np.testing.assert_allclose(result.as_numpy("z"), expected["z"], atol=ATOL)
    np.testing.assert_array_equal(result.as_numpy("n"), expected["n"])
    assert list(result.as_numpy("label_bytes")) == list(label)


def test_configured_signature(client, reference, call_tf):
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    result = client.infer("multi_scale", [_input("x", x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("w"), call_tf(reference["multi"], "scale", x=x)["w"], atol=ATOL)


def test_tf1_savedmodel(client, reference, call_tf):
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    result = client.infer("tf1", [_input("x", x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("y"), call_tf(reference["tf1"], x=x)["y"], atol=ATOL)


def test_wrong_dtype_is_refused(client):
    x = np.zeros((1, 3), dtype=np.float64)
    with pytest.raises(Exception, match="datatype FP64 does not match"):
        client.infer("tf1", [_input("x", x, "FP64")])


def test_v2_grpc_beside_tfserving_grpc(grpc_target, reference, call_tf):
    """V2's GRPCInferenceService and TF-Serving's services share the node's gRPC port."""
    import grpc
    import tensorflow as tf
    import tritonclient.grpc as grpcclient
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    x = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    expected = call_tf(reference["tf1"], x=x)["y"]
    v2 = grpcclient.InferenceServerClient(grpc_target)
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(v2.infer("tf1", [inp]).as_numpy("y"), expected, atol=ATOL)
    v2.close()
    with grpc.insecure_channel(grpc_target) as channel:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "tf1"
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        resp = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["y"]), expected, atol=ATOL)
