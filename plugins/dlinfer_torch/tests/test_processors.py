"""``image`` -> model -> ``topk``/``argmax`` end to end: PNG bytes in, ranked classes out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
import requests
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.api.testing import RunningNode, node_config, write_model
from dlinfer_torch import testing as tt

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
LABELS = ["cat", "dog", "bird", "fish", "frog", "horse", "ship"]


def _png(rng: np.random.Generator, h: int, w: int) -> bytes:
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def _center_crop(img: np.ndarray, shorter: int, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h < w:
        nh, nw = shorter, round(w * shorter / h)
    else:
        nh, nw = round(h * shorter / w), shorter
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[top : top + size, left : left + size]


def _expected_logits(cnn: torch.nn.Module, pngs: list[bytes], shorter: int | None = None) -> np.ndarray:
    """The same preprocessing written out independently: decode, resize, RGB, scale, normalise, NCHW."""
    batch = []
    for data in pngs:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if shorter:
            img = _center_crop(img, shorter, 16)
        else:
            img = cv2.resize(img, (16, 16), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        batch.append(((rgb - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1))
    with torch.inference_mode():
        return cnn(torch.from_numpy(np.stack(batch).astype(np.float32))).numpy()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("proc_repo")
    work = tmp_path_factory.mktemp("proc_files")
    cnn = tt.make(tt.TinyCNN, seed=11, classes=7)
    model = tt.save_torchscript(cnn, work / "cnn.pt").read_bytes()
    base = {"max_batch_size": 8, "input": [{"name": "image", "datatype": "FP32", "shape": [3, 16, 16]}]}
    image = {"mean": MEAN, "std": STD}
    write_model(
        root,
        "classify",
        files={"model.pt": model},
        config={
            **base,
            "preprocess": ["image"],
            "postprocess": ["topk"],
            "parameters": {"image": image, "topk": {"k": 3, "labels": LABELS}},
        },
    )
    write_model(
        root,
        "best",
        files={"model.pt": model},
        config={
            **base,
            "preprocess": ["image"],
            "postprocess": ["argmax"],
            "parameters": {"image": image, "argmax": {"softmax": True}},
        },
    )
    write_model(
        root,
        "crop",
        files={"model.pt": model},
        config={
            **base,
            "preprocess": ["image"],
            "postprocess": ["topk"],
            "parameters": {"image": {**image, "resize_shorter": 20}, "topk": {"k": 7}},
        },
    )
    write_model(
        root,
        "single",
        files={"model.pt": model},
        config={
            "max_batch_size": 0,
            "input": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 16, 16]}],
            "preprocess": ["image"],
            "postprocess": ["argmax"],
            "parameters": {"image": image},
        },
    )
    write_model(
        root,
        "bad_k",
        files={"model.pt": model},
        config={**base, "postprocess": ["topk"], "parameters": {"topk": {"k": 9}}},
    )
    write_model(
        root,
        "bad_labels",
        files={"model.pt": model},
        config={**base, "postprocess": ["argmax"], "parameters": {"argmax": {"labels": ["cat", "dog"]}}},
    )
    write_model(
        root,
        "bad_key",
        files={"model.pt": model},
        config={**base, "preprocess": ["image"], "parameters": {"image": {"mean": MEAN, "sizes": [2, 2]}}},
    )
    with RunningNode(node_config(root)) as node:
        yield node, cnn


def test_png_bytes_to_top_k_classes(served: tuple[RunningNode, Any]) -> None:
    node, cnn = served
    rng = np.random.default_rng(0)
    pngs = [_png(rng, 20, 24), _png(rng, 16, 16), _png(rng, 31, 9)]
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    inp = httpclient.InferInput("image", [len(pngs)], "BYTES")
    inp.set_data_from_numpy(np.array(pngs, dtype=object), binary_data=True)
    result = client.infer("classify", [inp])
    logits = _expected_logits(cnn, pngs)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(result.as_numpy("classes"), top)
    np.testing.assert_allclose(result.as_numpy("scores"), np.take_along_axis(logits, top, 1), atol=1e-5, rtol=0)
    labels = [[LABELS[i].encode() for i in row] for row in top]
    assert result.as_numpy("labels").tolist() == labels


def test_resize_shorter_side_and_center_crop(served: tuple[RunningNode, Any]) -> None:
    node, cnn = served
    rng = np.random.default_rng(5)
    pngs = [_png(rng, 30, 40), _png(rng, 50, 22)]
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    inp = httpclient.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(np.array(pngs, dtype=object), binary_data=True)
    result = client.infer("crop", [inp])
    logits = _expected_logits(cnn, pngs, shorter=20)
    order = np.argsort(-logits, axis=1, kind="stable")
    np.testing.assert_array_equal(result.as_numpy("classes"), order)
    np.testing.assert_allclose(result.as_numpy("scores"), np.take_along_axis(logits, order, 1), atol=1e-5, rtol=0)


def test_argmax_with_softmax(served: tuple[RunningNode, Any]) -> None:
    node, cnn = served
    pngs = [_png(np.random.default_rng(3), 16, 16)]
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    inp = httpclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array(pngs, dtype=object), binary_data=True)
    result = client.infer("best", [inp], outputs=[httpclient.InferRequestedOutput("class")])
    logits = _expected_logits(cnn, pngs)
    assert result.as_numpy("class").tolist() == logits.argmax(1).tolist()
    assert result.as_numpy("score") is None


def test_metadata_shows_what_clients_send_and_receive(served: tuple[RunningNode, Any]) -> None:
    node, _ = served
    meta = requests.get(f"{node.url}/v2/models/classify", timeout=30).json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": "classes", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "labels", "datatype": "BYTES", "shape": [-1, 3]},
    ]


def test_more_images_than_max_batch_size_are_refused_before_decoding(served: tuple[RunningNode, Any]) -> None:
    node, _ = served
    png = _png(np.random.default_rng(1), 8, 8)
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    inp = httpclient.InferInput("image", [9], "BYTES")
    inp.set_data_from_numpy(np.array([png] * 9, dtype=object), binary_data=True)
    with pytest.raises(InferenceServerException, match="exceeds the model's max_batch_size 8"):
        client.infer("classify", [inp])


def test_undecodable_bytes_are_a_clear_400(served: tuple[RunningNode, Any]) -> None:
    node, _ = served
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not an image"]}]}
    resp = requests.post(f"{node.url}/v2/models/classify/infer", json=body, timeout=30)
    assert resp.status_code == 400
    assert "not an image OpenCV can decode" in resp.json()["error"]
    floats = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}
    resp = requests.post(f"{node.url}/v2/models/classify/infer", json=floats, timeout=30)
    assert resp.status_code == 400
    assert "BYTES" in resp.json()["error"]


def test_bad_processor_settings_make_the_model_unavailable(served: tuple[RunningNode, Any]) -> None:
    node, _ = served
    rows = {r["name"]: r for r in requests.post(f"{node.url}/v2/repository/index", timeout=30).json()}
    assert rows["bad_k"]["state"] == "UNAVAILABLE"
    assert "k = 9" in rows["bad_k"]["reason"] and "7 classes" in rows["bad_k"]["reason"]
    assert rows["bad_key"]["state"] == "UNAVAILABLE"
    assert "unknown keys ['sizes']" in rows["bad_key"]["reason"]
    assert rows["bad_labels"]["state"] == "UNAVAILABLE"
    assert "labels has 2 names; output 'output' has 7 classes" in rows["bad_labels"]["reason"]
    assert rows["classify"]["state"] == "READY"


def test_a_model_without_batching_takes_exactly_its_images(served: tuple[RunningNode, Any]) -> None:
    node, cnn = served
    rng = np.random.default_rng(8)
    pngs = [_png(rng, 16, 16), _png(rng, 16, 16)]
    meta = requests.get(f"{node.url}/v2/models/single", timeout=30).json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    inp = httpclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array(pngs[:1], dtype=object), binary_data=True)
    assert (
        client.infer("single", [inp]).as_numpy("class").tolist() == _expected_logits(cnn, pngs[:1]).argmax(1).tolist()
    )
    two = httpclient.InferInput("image", [2], "BYTES")
    two.set_data_from_numpy(np.array(pngs, dtype=object), binary_data=True)
    with pytest.raises(InferenceServerException, match=r"shape \[2\] does not match the model's \[1\]"):
        client.infer("single", [two])


def test_png_bytes_over_grpc(served: tuple[RunningNode, Any]) -> None:
    import tritonclient.grpc as grpcclient

    node, cnn = served
    pngs = [_png(np.random.default_rng(13), 18, 18)]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array(pngs, dtype=object))
    result = client.infer("classify", [inp])
    top = np.argsort(-_expected_logits(cnn, pngs), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(result.as_numpy("classes"), top)
    assert result.as_numpy("labels").tolist() == [[LABELS[i].encode() for i in top[0]]]
