"""A real node serving Caffe models, queried with tritonclient; broken models
are reported unavailable with their reason while the rest keep serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from dlinfer.api.testing import RunningNode, node_config
from dlinfer_caffe.converter import opencv_outputs
from dlinfer_caffe.testing import L, conv, net
from dlinfer_caffe.writer import write_caffe_model

from .conftest import relative_error

httpclient = pytest.importorskip("tritonclient.http")

BODY = (
    conv("conv1", "data", 6, 3, 2, 1)
    + L("bn1", "BatchNorm", "conv1", "conv1")
    + L("scale1", "Scale", "conv1", "conv1", "scale_param { bias_term: true }")
    + L("relu1", "ReLU", "conv1", "conv1")
    + L("pool1", "Pooling", "conv1", params="pooling_param { pool: MAX kernel_size: 3 stride: 2 }")
    + L("fc", "InnerProduct", "pool1", params="inner_product_param { num_output: 5 }")
    + L("prob", "Softmax", "fc")
)
PROTOTXT = net("small", (1, 3, 16, 16), BODY)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_caffe_model(root / "caffenet" / "1", PROTOTXT, seed=3)

    bad_syntax = root / "bad_syntax" / "1"
    write_caffe_model(bad_syntax, PROTOTXT)
    (bad_syntax / "deploy.prototxt").write_text(PROTOTXT.replace("num_output: 5 }", "num_output: 5 "))

    corrupt = root / "corrupt" / "1"
    write_caffe_model(corrupt, PROTOTXT)
    data = (corrupt / "model.caffemodel").read_bytes()
    (corrupt / "model.caffemodel").write_bytes(data[: len(data) // 2])

    mismatch = root / "mismatch" / "1"
    write_caffe_model(mismatch, PROTOTXT)
    (mismatch / "deploy.prototxt").write_text(PROTOTXT.replace("num_output: 6", "num_output: 8"))

    unsupported = root / "unsupported" / "1"
    write_caffe_model(unsupported, PROTOTXT)
    (unsupported / "deploy.prototxt").write_text(PROTOTXT + L("thr", "Threshold", "prob"))
    return root


def test_node_serves_caffe_model_to_tritonclient(repository: Path) -> None:
    config = node_config(repository)
    with RunningNode(config) as node:
        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
        assert client.is_model_ready("caffenet")
        meta = client.get_model_metadata("caffenet")
        assert meta["platform"] == "caffe"
        assert meta["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
        assert {o["name"] for o in meta["outputs"]} == {"prob"}

        x = np.random.default_rng(7).standard_normal((4, 3, 16, 16)).astype(np.float32)
        inp = httpclient.InferInput("data", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        result = client.infer("caffenet", [inp], outputs=[httpclient.InferRequestedOutput("prob", binary_data=False)])
        got = result.as_numpy("prob")

        version = repository / "caffenet" / "1"
        expected = opencv_outputs(version / "deploy.prototxt", version / "model.caffemodel", {"data": x}, ["prob"])
        assert got.shape == (4, 5)
        assert relative_error(expected["prob"], got) <= 1e-4
        np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-5)

        # The same model over V2 gRPC.
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(f"127.0.0.1:{config.server.grpc_port}") as grpc:
            assert grpc.get_model_metadata("caffenet", as_json=True)["platform"] == "caffe"
            ginp = grpcclient.InferInput("data", list(x.shape), "FP32")
            ginp.set_data_from_numpy(x)
            np.testing.assert_allclose(grpc.infer("caffenet", [ginp]).as_numpy("prob"), got, rtol=1e-6, atol=1e-7)


def test_broken_models_are_unavailable_with_reason(repository: Path) -> None:
    config = node_config(repository)
    with RunningNode(config) as node:
        index = requests.post(f"{node.url}/v2/repository/index", json={}, timeout=10).json()
        by_name = {row["name"]: row for row in index}
        assert by_name["caffenet"]["state"] == "READY"
        reasons = {name: by_name[name]["reason"] for name in ("bad_syntax", "corrupt", "mismatch", "unsupported")}
        assert all(by_name[name]["state"] == "UNAVAILABLE" for name in reasons)
        assert "deploy.prototxt" in reasons["bad_syntax"] and "not a valid Caffe network" in reasons["bad_syntax"]
        assert "model.caffemodel" in reasons["corrupt"] and "corrupt or truncated" in reasons["corrupt"]
        assert "layer 'conv1' (Convolution)" in reasons["mismatch"]
        assert "[6, 3, 3, 3]" in reasons["mismatch"] and "[8, 3, 3, 3]" in reasons["mismatch"]
        assert "'thr'" in reasons["unsupported"] and "'Threshold'" in reasons["unsupported"]
        assert "Convolution" in reasons["unsupported"]  # the supported list

        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
        assert not client.is_model_ready("corrupt")
        r = requests.post(
            f"{node.url}/v2/models/mismatch/infer",
            json={"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0] * 768}]},
            timeout=10,
        )
        assert r.status_code == 503 and "mismatch" in r.json()["error"]
        # The good model still answers after the failures.
        x = np.zeros((1, 3, 16, 16), np.float32)
        inp = httpclient.InferInput("data", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        out = client.infer("caffenet", [inp]).as_numpy("prob")
        assert out.shape == (1, 5)


def test_transform_runs_in_the_graph(tmp_path: Path) -> None:
    """Clients send RGB HWC uint8 images; the node crops, swaps to BGR, subtracts
    the mean image and scales, as Caffe's data layer did in the TEST phase."""
    from dlinfer.api.testing import write_model
    from dlinfer_caffe.writer import write_mean_file

    root = tmp_path / "models"
    version = root / "bgr" / "1"
    write_caffe_model(version, PROTOTXT, seed=4)
    rng = np.random.default_rng(5)
    mean = rng.uniform(90, 130, (3, 20, 22)).astype(np.float32)
    write_mean_file(version / "mean.binaryproto", mean)
    transform = {
        "layout": "NHWC",
        "datatype": "UINT8",
        "channel_swap": True,
        "crop_size": 16,
        "mean_file": "mean.binaryproto",
        "scale": 0.017,
    }
    write_model(root, "bgr", 1, config={"parameters": {"transform": transform}})

    images = rng.integers(0, 256, (2, 20, 22, 3), dtype=np.uint8)
    with RunningNode(node_config(root)) as node:
        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
        meta = client.get_model_metadata("bgr")
        assert meta["inputs"] == [{"name": "data", "datatype": "UINT8", "shape": [-1, 20, 22, 3]}]
        inp = httpclient.InferInput("data", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images, binary_data=False)
        got = client.infer("bgr", [inp]).as_numpy("prob")

    bgr = images[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    blob = (bgr[:, :, 2:18, 3:19] - mean[:, 2:18, 3:19]) * 0.017
    expected = opencv_outputs(version / "deploy.prototxt", version / "model.caffemodel", {"data": blob}, ["prob"])
    assert relative_error(expected["prob"], got) <= 1e-4


def test_served_networks_match_opencv(tmp_path: Path) -> None:
    """The classic architectures and the many-layer net, served by one node and
    queried with tritonclient, against OpenCV DNN on the same files."""
    from dlinfer_caffe.testing import CLASSIC, mixed

    root = tmp_path / "models"
    nets = {**{name: make() for name, make in CLASSIC.items()}, "mixed": mixed()}
    for seed, (name, text) in enumerate(nets.items()):
        write_caffe_model(root / name / "1", text, seed=seed)
    rng = np.random.default_rng(11)
    with RunningNode(node_config(root)) as node:
        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"), network_timeout=120)
        for name in nets:
            meta = client.get_model_metadata(name)
            shape = [2, *meta["inputs"][0]["shape"][1:]]
            x = rng.standard_normal(shape).astype(np.float32)
            inp = httpclient.InferInput("data", shape, "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            got = client.infer(name, [inp]).as_numpy("prob")
            version = root / name / "1"
            expected = opencv_outputs(version / "deploy.prototxt", version / "model.caffemodel", {"data": x}, ["prob"])
            assert relative_error(expected["prob"].reshape(got.shape), got) <= 1e-4, name


def test_unload_and_reload(repository: Path) -> None:
    with RunningNode(node_config(repository)) as node:
        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
        assert requests.post(f"{node.url}/v2/repository/models/caffenet/unload", timeout=10).status_code == 200
        assert not client.is_model_ready("caffenet")
        assert requests.post(f"{node.url}/v2/repository/models/caffenet/load", timeout=30).status_code == 200
        assert client.is_model_ready("caffenet")
        x = np.ones((1, 3, 16, 16), np.float32)
        inp = httpclient.InferInput("data", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("caffenet", [inp]).as_numpy("prob").shape == (1, 5)


def test_every_layer_net_served_matches_opencv(tmp_path: Path) -> None:
    """Each per-layer net of the OpenCV cross-check, served by one node; every
    network output fetched with tritonclient and compared with OpenCV DNN."""
    from .test_opencv_crosscheck import LAYER_NETS

    root = tmp_path / "models"
    for i, (name, (shape, body, _)) in enumerate(LAYER_NETS.items()):
        write_caffe_model(root / name / "1", net(name, shape, body), seed=i)
    rng = np.random.default_rng(13)
    with RunningNode(node_config(root)) as node:
        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
        for name in LAYER_NETS:
            meta = client.get_model_metadata(name)
            shape = [3, *meta["inputs"][0]["shape"][1:]]
            x = rng.standard_normal(shape).astype(np.float32)
            inp = httpclient.InferInput("data", shape, "FP32")
            inp.set_data_from_numpy(x)
            outputs = [o["name"] for o in meta["outputs"]]
            result = client.infer(name, [inp])
            version = root / name / "1"
            expected = opencv_outputs(version / "deploy.prototxt", version / "model.caffemodel", {"data": x}, outputs)
            for out in outputs:
                got = result.as_numpy(out)
                assert relative_error(expected[out].reshape(got.shape), got) <= 1e-4, (name, out)


def test_onnx_optimizers_take_the_converted_model(tmp_path: Path) -> None:
    """``optimize = ["openvino"]`` on a Caffe model: the optimizer gets its ONNX form from
    this plugin's converter (input transform included) and serves what OpenCV computes."""
    pytest.importorskip("dlinfer_mkl")
    pytest.importorskip("openvino")
    from dlinfer.api.testing import write_model
    from dlinfer_caffe.testing import mobilenet

    root = tmp_path / "models"
    version = root / "mobilenet" / "1"
    write_caffe_model(version, mobilenet(8, 4), seed=6)
    transform = {"layout": "NHWC", "channel_swap": True, "mean_value": [104.0, 117.0, 123.0], "scale": 0.017}
    write_model(root, "mobilenet", 1, config={"optimize": ["openvino"], "parameters": {"transform": transform}})
    images = np.random.default_rng(8).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    with RunningNode(node_config(root)) as node:
        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
        meta = client.get_model_metadata("mobilenet")
        assert meta["platform"] == "openvino"
        assert meta["inputs"][0]["shape"] == [-1, 224, 224, 3]
        inp = httpclient.InferInput("data", list(images.shape), "FP32")
        inp.set_data_from_numpy(images)
        got = client.infer("mobilenet", [inp]).as_numpy("prob")
    blob = (
        images[..., ::-1].transpose(0, 3, 1, 2) - np.array([104.0, 117.0, 123.0], np.float32)[:, None, None]
    ) * 0.017
    files = (version / "deploy.prototxt", version / "model.caffemodel")
    expected = opencv_outputs(*files, {"data": np.ascontiguousarray(blob, np.float32)}, ["prob"])
    assert relative_error(expected["prob"].reshape(got.shape), got) <= 1e-4
