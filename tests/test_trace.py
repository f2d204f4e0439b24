"""The trace extension: tritonclient's get/update_trace_settings over HTTP and gRPC, node-wide and
per model, and the timestamps written to ``server.trace_file``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.api.testing import RunningNode, V2Client, node_config, onnx_linear_model, wait_for, write_model
from dlinfer.server import STATE


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("trace")
    for name in ("linear", "other"):
        write_model(root, name, 1, {"model.onnx": onnx_linear_model()})
    trace_file = root / "traces.jsonl"
    with RunningNode(node_config(root, server={"trace_file": str(trace_file)})) as n:
        n.trace_file = trace_file  # type: ignore[attr-defined]
        yield n


def _records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _infer(node: RunningNode, model: str, n: int) -> None:
    client = V2Client(node.url)
    for _ in range(n):
        client.infer(model, {"x": np.ones((1, 4), np.float32)})


def test_off_until_asked(node: RunningNode) -> None:
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    settings = client.get_trace_settings()
    assert settings["trace_level"] == ["OFF"] and settings["trace_file"] == str(node.trace_file)
    _infer(node, "linear", 3)
    assert _records(node.trace_file) == []
    client.close()


def test_timestamps_sampled_per_model(node: RunningNode) -> None:
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    client.update_trace_settings(
        model_name="linear", settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "2", "trace_count": "3"}
    )
    assert client.get_trace_settings(model_name="linear")["trace_rate"] == "2"
    assert client.get_trace_settings()["trace_level"] == ["OFF"]  # the node's own are unchanged
    before = len(_records(node.trace_file))
    _infer(node, "linear", 10)  # every 2nd, at most 3
    _infer(node, "other", 4)  # not traced
    wait_for(lambda: len(_records(node.trace_file)) == before + 3, "three traces")
    new = _records(node.trace_file)[before:]
    assert {r["model_name"] for r in new} == {"linear"}
    for r in new:
        names = [t["name"] for t in r["timestamps"]]
        assert names == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
        ns = [t["ns"] for t in r["timestamps"]]
        assert ns == sorted(ns)
    # null: the model's settings go back to the node's (off).
    client.update_trace_settings(
        model_name="linear", settings={"trace_level": None, "trace_rate": None, "trace_count": None}
    )
    assert client.get_trace_settings(model_name="linear")["trace_level"] == ["OFF"]
    client.close()


def test_grpc_settings(node: RunningNode) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    out = client.update_trace_settings(settings={"trace_rate": "5"}, as_json=True)
    assert out["settings"]["trace_rate"]["value"] == ["5"]
    assert client.get_trace_settings(as_json=True)["settings"]["trace_level"]["value"] == ["OFF"]
    with pytest.raises(InferenceServerException, match="trace_file cannot be set"):
        client.update_trace_settings(settings={"trace_file": "/tmp/elsewhere.json"})
    client.update_trace_settings(settings={"trace_rate": "1000"})
    client.close()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"trace_level": ["LOUD"]}, "trace_level must be"),
        ({"trace_rate": "often"}, "must be an integer"),
        ({"trace_count": "-2"}, "at least -1"),
        ({"trace_mode": "opentelemetry"}, "trace_mode must be"),
        ({"trace_colour": "1"}, "unknown trace setting"),
    ],
)
def test_bad_settings_are_refused(node: RunningNode, doc: dict, message: str) -> None:
    r = requests.post(f"{node.url}/v2/trace/setting", json=doc, timeout=10)
    assert r.status_code == 400 and message in r.json()["error"]


def test_tracing_needs_a_trace_file(tmp_path: Path) -> None:
    with RunningNode(node_config(tmp_path)) as n:
        r = requests.post(f"{n.url}/v2/trace/setting", json={"trace_level": ["TIMESTAMPS"]}, timeout=10)
        assert r.status_code == 400 and "server.trace_file" in r.json()["error"]


def test_settings_of_an_unknown_model_are_not_found(node: RunningNode) -> None:
    assert requests.get(f"{node.url}/v2/models/nosuch/trace/setting", timeout=10).status_code == 404
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    with pytest.raises(InferenceServerException, match="nosuch"):
        client.get_trace_settings(model_name="nosuch")
    client.close()


def test_a_trace_file_that_cannot_be_written_does_not_fail_inference(tmp_path: Path) -> None:
    write_model(tmp_path, "linear", 1, {"model.onnx": onnx_linear_model()})
    unwritable = tmp_path / "traces"
    unwritable.mkdir()  # a folder where the file should be: every write fails
    with RunningNode(node_config(tmp_path, server={"trace_file": str(unwritable)})) as n:
        client = httpclient.InferenceServerClient(n.url.removeprefix("http://"))
        client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
        for _ in range(3):
            inp = httpclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(np.ones((1, 4), np.float32))
            assert client.infer("linear", [inp]).as_numpy("probs").shape == (1, 3)
        tracer = n.app[STATE].tracer
        assert tracer._pending == []  # failed records are dropped, not kept for ever
        client.close()


def test_null_resets_a_node_setting_to_its_start_value(node: RunningNode) -> None:
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    client.update_trace_settings(settings={"trace_rate": "7"})
    assert client.update_trace_settings(settings={"trace_rate": None})["trace_rate"] == "1000"
    client.close()
