"""The statistics extension over HTTP and gRPC, read with tritonclient after real requests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_model


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model(seed=1)})
    write_model(root, "linear", 2, {"model.onnx": onnx_linear_model(seed=2)}, config={"version_policy": {"all": True}})
    write_model(root, "idle", 1, {"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(root)) as n:
        client = httpclient.InferenceServerClient(n.url.removeprefix("http://"))
        for rows, version in ((2, "1"), (2, "1"), (3, "1"), (1, "2")):
            x = httpclient.InferInput("x", [rows, 4], "FP32")
            x.set_data_from_numpy(np.ones((rows, 4), np.float32))
            client.infer("linear", [x], model_version=version)
        bad = httpclient.InferInput("x", [1, 5], "FP32")  # wrong shape: refused by validation, counted as failed
        bad.set_data_from_numpy(np.ones((1, 5), np.float32))
        with pytest.raises(InferenceServerException):
            client.infer("linear", [bad], model_version="1")
        yield n


def _v1(stats: dict) -> dict:
    return next(s for s in stats["model_stats"] if s["name"] == "linear" and s["version"] == "1")


def test_http_statistics_count_requests_rows_and_batches(node: RunningNode) -> None:
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    stats = client.get_inference_statistics("linear")
    assert [(s["name"], s["version"]) for s in stats["model_stats"]] == [("linear", "1"), ("linear", "2")]
    v1 = _v1(stats)
    assert v1["inference_count"] == 7 and v1["execution_count"] == 3  # rows, framework calls
    inf = v1["inference_stats"]
    assert inf["success"]["count"] == 3 and inf["fail"]["count"] == 1
    assert inf["queue"]["count"] == 3 and inf["compute_infer"]["count"] == 3
    assert inf["success"]["ns"] >= inf["compute_infer"]["ns"] > 0
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in v1["batch_stats"]] == [(2, 2), (3, 1)]
    assert v1["last_inference"] > 0
    one = client.get_inference_statistics("linear", model_version="2")["model_stats"]
    assert len(one) == 1 and one[0]["inference_count"] == 1
    every = requests.get(f"{node.url}/v2/models/stats", timeout=10).json()["model_stats"]
    assert {(s["name"], s["version"]) for s in every} == {("linear", "1"), ("linear", "2"), ("idle", "1")}
    idle = next(s for s in every if s["name"] == "idle")
    assert idle["inference_count"] == 0 and idle["last_inference"] == 0 and idle["batch_stats"] == []


def test_grpc_statistics_match_http(node: RunningNode) -> None:
    http_stats = _v1(requests.get(f"{node.url}/v2/models/linear/stats", timeout=10).json())
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    grpc_v1 = _v1(client.get_inference_statistics("linear", as_json=True))
    assert int(grpc_v1["inference_count"]) == http_stats["inference_count"] == 7
    assert int(grpc_v1["inference_stats"]["success"]["ns"]) == http_stats["inference_stats"]["success"]["ns"]
    assert "statistics" in client.get_server_metadata(as_json=True)["extensions"]


def test_unknown_model_statistics_are_not_found(node: RunningNode) -> None:
    r = requests.get(f"{node.url}/v2/models/nope/stats", timeout=10)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert requests.get(f"{node.url}/v2/models/linear/versions/9/stats", timeout=10).status_code == 404
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    with pytest.raises(InferenceServerException, match="nope"):
        client.get_inference_statistics("nope")
