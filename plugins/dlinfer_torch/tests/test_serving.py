"""Tiny torch models in every format, served by a real node and queried with real clients."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as httpclient

from dlinfer.api.testing import RunningNode, node_config, write_model
from dlinfer_torch import testing as tt

ATOL = 1e-5
CNN_INPUT = {"name": "image", "datatype": "FP32", "shape": [3, 16, 16]}


def _file(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A repository with one model per format and shape of output, plus a broken and an unsafe one."""
    root = tmp_path_factory.mktemp("torch_repo")
    work = tmp_path_factory.mktemp("torch_files")
    cnn = tt.make(tt.TinyCNN, seed=1)
    two = tt.make(tt.TwoInTwoOut, seed=2)
    dict_out = tt.make(tt.DictOut, seed=3)

    write_model(
        root,
        "cnn_script",
        files={"model.pt": _file(tt.save_torchscript(cnn, work / "cnn.pt"))},
        config={"max_batch_size": 8, "input": [CNN_INPUT]},
    )
    example = (torch.randn(2, 3, 16, 16),)
    write_model(root, "cnn_export", files={"model.pt2": _file(tt.save_exported(cnn, example, work / "cnn.pt2"))})
    write_model(
        root,
        "cnn_state",
        files={"model.pt": _file(tt.save_state_dict(cnn, work / "cnn_sd.pt"))},
        config={
            "max_batch_size": 8,
            "input": [CNN_INPUT],
            "parameters": {"model_class": "dlinfer_torch.testing:TinyCNN", "init_kwargs": {"classes": 5}},
        },
    )
    write_model(
        root,
        "multi",
        files={"model.pt": _file(tt.save_torchscript(two, work / "two.pt"))},
        config={
            "max_batch_size": 4,
            # Listed out of forward's order: matched to forward(image, extra) by name.
            "input": [
                {"name": "extra", "datatype": "FP32", "shape": [4]},
                {"name": "image", "datatype": "FP32", "shape": [3, 8, 8]},
            ],
            "output": [
                {"name": "logits", "datatype": "FP32", "shape": [3]},
                {"name": "pooled", "datatype": "FP32", "shape": [4]},
            ],
        },
    )
    two_example = (torch.randn(2, 3, 8, 8), torch.randn(2, 4))
    write_model(
        root,
        "multi_export",
        files={"model.pt2": _file(tt.save_exported(two, two_example, work / "two.pt2"))},
        # The program knows its inputs; config only names the tuple's outputs.
        config={
            "output": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "pooled", "datatype": "FP32", "shape": [-1, 4]},
            ]
        },
    )
    write_model(
        root,
        "dict_out",
        files={"model.pth": _file(tt.save_state_dict(dict_out, work / "dict.pth"))},
        config={
            "max_batch_size": 8,
            "input": [{"name": "x", "datatype": "FP32", "shape": [6]}],
            "parameters": {"model_class": "dlinfer_torch.testing:DictOut"},
        },
    )
    write_model(
        root,
        "cnn_batched",
        files={"model.pt": _file(work / "cnn.pt")},
        config={
            "max_batch_size": 8,
            "instance_count": 2,
            "dynamic_batching": {"max_queue_delay_us": 2000},
            "input": [CNN_INPUT],
        },
    )
    good = _file(tt.save_torchscript(cnn, work / "cut.pt"))
    write_model(root, "corrupt", files={"model.pt": good[: len(good) // 2]}, config={"input": [CNN_INPUT]})
    write_model(
        root,
        "pickled",
        files={"model.pt": _file(tt.save_pickled(dict_out, work / "pickled.pt"))},
        config={"max_batch_size": 8, "input": [{"name": "x", "datatype": "FP32", "shape": [6]}]},
    )
    return root, {"cnn": cnn, "two": two, "dict_out": dict_out}


@pytest.fixture(scope="module")
def node(repo: tuple[Path, dict[str, Any]]) -> Iterator[RunningNode]:
    with RunningNode(node_config(repo[0])) as running:
        yield running


def _index(node: RunningNode) -> dict[str, dict[str, Any]]:
    rows = requests.post(f"{node.url}/v2/repository/index", timeout=30).json()
    return {r["name"]: r for r in rows}


@pytest.mark.parametrize("model", ["cnn_script", "cnn_export", "cnn_state"])
def test_each_format_matches_torch(node: RunningNode, repo: tuple[Path, dict[str, Any]], model: str) -> None:
    cnn = repo[1]["cnn"]
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    x = np.random.default_rng(7).standard_normal((3, 3, 16, 16)).astype(np.float32)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(model, [inp])
    name = "output"
    got = result.as_numpy(name)
    with torch.inference_mode():
        expected = cnn(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_metadata_reports_full_shapes_and_platform(node: RunningNode) -> None:
    meta = requests.get(f"{node.url}/v2/models/cnn_export", timeout=30).json()
    assert meta["platform"] == "pytorch_export"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 5]}]
    script = requests.get(f"{node.url}/v2/models/cnn_script", timeout=30).json()
    assert script["platform"] == "pytorch_libtorch"
    assert script["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 5]}]


@pytest.mark.parametrize("model", ["multi", "multi_export"])
def test_multiple_inputs_and_named_tuple_outputs(
    node: RunningNode, repo: tuple[Path, dict[str, Any]], model: str
) -> None:
    rng = np.random.default_rng(3)
    image = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    extra = rng.standard_normal((2, 4)).astype(np.float32)
    body = {
        "inputs": [
            {"name": "extra", "datatype": "FP32", "shape": [2, 4], "data": extra.ravel().tolist()},
            {"name": "image", "datatype": "FP32", "shape": [2, 3, 8, 8], "data": image.ravel().tolist()},
        ]
    }
    resp = requests.post(f"{node.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    outs = {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in resp.json()["outputs"]}
    with torch.inference_mode():
        logits, pooled = repo[1]["two"](torch.from_numpy(image), torch.from_numpy(extra))
    assert set(outs) == {"logits", "pooled"}
    np.testing.assert_allclose(outs["logits"], logits.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(outs["pooled"], pooled.numpy(), atol=ATOL, rtol=0)


def test_dict_outputs_are_named_by_their_keys(node: RunningNode, repo: tuple[Path, dict[str, Any]]) -> None:
    meta = requests.get(f"{node.url}/v2/models/dict_out", timeout=30).json()
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probs"]
    x = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    inp = httpclient.InferInput("x", [4, 6], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    result = client.infer("dict_out", [inp], outputs=[httpclient.InferRequestedOutput("probs")])
    with torch.inference_mode():
        expected = repo[1]["dict_out"](torch.from_numpy(x))
    np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"].numpy(), atol=ATOL, rtol=0)
    assert result.as_numpy("logits") is None


def test_corrupt_file_is_unavailable_with_reason_and_others_serve(node: RunningNode) -> None:
    index = _index(node)
    assert index["corrupt"]["state"] == "UNAVAILABLE"
    assert "model.pt" in index["corrupt"]["reason"]
    assert "damaged" in index["corrupt"]["reason"]
    ready = requests.get(f"{node.url}/v2/models/corrupt/ready", timeout=30)
    assert ready.status_code != 200
    for name in ("cnn_script", "cnn_export", "cnn_state", "cnn_batched", "multi", "multi_export", "dict_out"):
        assert index[name]["state"] == "READY", index[name]


def test_pickled_module_refused_by_default(node: RunningNode) -> None:
    reason = _index(node)["pickled"]["reason"]
    assert _index(node)["pickled"]["state"] == "UNAVAILABLE"
    assert "allow_pickle = true" in reason and "repository.allow_pickle" in reason


def test_bad_inputs_get_clear_errors_and_the_node_keeps_serving(node: RunningNode) -> None:
    wrong_shape = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}]}
    resp = requests.post(f"{node.url}/v2/models/cnn_script/infer", json=wrong_shape, timeout=30)
    assert resp.status_code == 400
    assert "shape [1, 3, 8, 8]" in resp.json()["error"]
    wrong_type = {"inputs": [{"name": "image", "datatype": "INT32", "shape": [1, 3, 16, 16], "data": [0] * 768}]}
    resp = requests.post(f"{node.url}/v2/models/cnn_state/infer", json=wrong_type, timeout=30)
    assert resp.status_code == 400
    assert "INT32" in resp.json()["error"]
    ok = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": [0.5] * 6}]}
    assert requests.post(f"{node.url}/v2/models/dict_out/infer", json=ok, timeout=30).status_code == 200


def _pickle_repo(root: Path, model_config: dict[str, Any], module: torch.nn.Module, work: Path) -> None:
    write_model(
        root,
        "pickled",
        files={"model.pt": _file(tt.save_pickled(module, work / "p.pt"))},
        config={"max_batch_size": 8, "input": [{"name": "x", "datatype": "FP32", "shape": [6]}], **model_config},
    )


def test_pickle_needs_the_node_opt_in_too(tmp_path: Path) -> None:
    module = tt.make(tt.DictOut, seed=4)
    _pickle_repo(tmp_path / "models", {"allow_pickle": True}, module, tmp_path)
    with RunningNode(node_config(tmp_path / "models")) as running:
        row = _index(running)["pickled"]
    assert row["state"] == "UNAVAILABLE"
    assert "repository.allow_pickle = true" in row["reason"]


@pytest.mark.parametrize("fmt", [None, "pytorch_pickle"])
def test_pickle_served_when_model_and_node_opt_in(tmp_path: Path, fmt: str | None) -> None:
    module = tt.make(tt.DictOut, seed=4)
    _pickle_repo(tmp_path / "models", {"allow_pickle": True, **({"format": fmt} if fmt else {})}, module, tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    with RunningNode(node_config(tmp_path / "models", repository={"allow_pickle": True})) as running:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 6], "data": x.ravel().tolist()}]}
        resp = requests.post(f"{running.url}/v2/models/pickled/infer", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    probs = next(o for o in resp.json()["outputs"] if o["name"] == "probs")
    with torch.inference_mode():
        expected = module(torch.from_numpy(x))["probs"].numpy()
    np.testing.assert_allclose(np.reshape(probs["data"], probs["shape"]), expected, atol=ATOL, rtol=0)


def test_explicit_pickle_format_without_opt_in_is_refused(tmp_path: Path) -> None:
    _pickle_repo(tmp_path / "models", {"format": "pytorch_pickle"}, tt.make(tt.DictOut), tmp_path)
    with RunningNode(node_config(tmp_path / "models", repository={"allow_pickle": True})) as running:
        row = _index(running)["pickled"]
    assert row["state"] == "UNAVAILABLE"
    assert "allow_pickle = true in the model's config.toml" in row["reason"]


def test_concurrent_requests_batched_over_two_instances(node: RunningNode, repo: tuple[Path, dict[str, Any]]) -> None:
    """Requests merged by the dynamic batcher and run on two threads each get their own rows back."""
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((1 + i % 3, 3, 16, 16)).astype(np.float32) for i in range(12)]

    def call(x: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        resp = requests.post(f"{node.url}/v2/models/cnn_batched/infer", json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        out = resp.json()["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, xs))
    with torch.inference_mode():
        for x, got in zip(xs, results, strict=True):
            np.testing.assert_allclose(got, repo[1]["cnn"](torch.from_numpy(x)).numpy(), atol=ATOL, rtol=0)


def test_grpc_client_gets_the_same_outputs(node: RunningNode, repo: tuple[Path, dict[str, Any]]) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    x = np.random.default_rng(21).standard_normal((2, 3, 16, 16)).astype(np.float32)
    inp = grpcclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("cnn_export", [inp]).as_numpy("output")
    with torch.inference_mode():
        expected = repo[1]["cnn"](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_unload_and_reload_through_the_control_api(tmp_path: Path) -> None:
    cnn = tt.make(tt.TinyCNN, seed=9)
    write_model(
        tmp_path / "models",
        "cnn",
        files={"model.pt2": _file(tt.save_exported(cnn, (torch.randn(2, 3, 16, 16),), tmp_path / "cnn.pt2"))},
    )
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": x.ravel().tolist()}]}
    with RunningNode(node_config(tmp_path / "models")) as running:
        control = f"{running.url}/v2/repository/models/cnn"
        assert requests.post(f"{control}/unload", timeout=30).status_code == 200
        assert requests.post(f"{running.url}/v2/models/cnn/infer", json=body, timeout=30).status_code != 200
        assert requests.post(f"{control}/load", timeout=60).status_code == 200
        resp = requests.post(f"{running.url}/v2/models/cnn/infer", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    out = resp.json()["outputs"][0]
    with torch.inference_mode():
        expected = cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), expected, atol=ATOL, rtol=0)
