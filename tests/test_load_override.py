"""Model control with a configuration and files sent by the client (Triton's load parameters),
with tritonclient over HTTP and gRPC, to a node and through a gateway."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.api.testing import RunningNode, node_config, onnx_linear_model, wait_for, write_model

#: Triton's JSON form of a model configuration, as clients send it.
CONFIG = {
    "name": "sent",
    "platform": "onnxruntime_onnx",
    "max_batch_size": 8,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [
        {"name": "logits", "data_type": "TYPE_FP32", "dims": [3]},
        {"name": "probs", "data_type": "TYPE_FP32", "dims": [3]},
    ],
}
MODEL = onnx_linear_model(seed=7)


def _leftovers() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "dlinfer-load-*")))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(root, repository={"control_mode": "explicit"})) as n:
        yield n


def _http(node: RunningNode) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(node.url.removeprefix("http://"))


def _grpc(node: RunningNode) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")


def _probs(client: Any, module: Any, model: str) -> np.ndarray:
    inp = module.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(np.ones((2, 4), np.float32))
    return client.infer(model, [inp]).as_numpy("probs")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_model_sent_with_its_files(node: RunningNode, protocol: str) -> None:
    client, module = (_http(node), httpclient) if protocol == "http" else (_grpc(node), grpcclient)
    before = _leftovers()
    client.load_model("sent", config=json.dumps(CONFIG), files={"file:1/model.onnx": MODEL})
    assert client.is_model_ready("sent")
    assert _probs(client, module, "sent").shape == (2, 3)
    config = requests.get(f"{node.url}/v2/models/sent/config", timeout=10).json()
    assert config["max_batch_size"] == 8
    assert len(_leftovers() - before) == 1  # the files live in a private folder ...
    client.unload_model("sent")
    assert _leftovers() - before == set()  # ... removed with the model
    client.close()


def test_a_config_override_then_a_plain_load_restores_the_repository_config(node: RunningNode) -> None:
    client = _http(node)
    override = {**CONFIG, "name": "linear", "max_batch_size": 2}
    client.load_model("linear", config=json.dumps(override))
    assert requests.get(f"{node.url}/v2/models/linear/config", timeout=10).json()["max_batch_size"] == 2
    client.load_model("linear")
    assert requests.get(f"{node.url}/v2/models/linear/config", timeout=10).json()["max_batch_size"] != 2
    client.close()


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"file:1/model.onnx": "AAAA"}, "need a 'config' parameter"),
        ({"config": json.dumps(CONFIG), "file:../escape.onnx": "AAAA"}, "relative to the model's folder"),
        ({"config": json.dumps(CONFIG), "file:/abs/model.onnx": "AAAA"}, "relative to the model's folder"),
        ({"config": json.dumps(CONFIG), "file:1/model.onnx": "not base64!"}, "not valid base64"),
        ({"config": "{not json"}, "not a valid Triton model configuration"),
        ({"config": json.dumps({**CONFIG, "optimization": {"priority": "PRIORITY_MAX"}})}, "optimization"),
        ({"colour": "red"}, "not supported"),
        # Paths that cannot all be files of one folder: a client error, not a server failure.
        ({"config": json.dumps(CONFIG), "file:1": "AAAA", "file:1/model.onnx": "AAAA"}, "cannot be written"),
        ({"config": json.dumps(CONFIG), "file:.": "AAAA"}, "relative to the model's folder"),
        ({"config": json.dumps(CONFIG), "file:1/a\u0000b": "AAAA"}, "relative to the model's folder"),
    ],
)
def test_bad_load_parameters_are_refused(node: RunningNode, parameters: dict, message: str) -> None:
    r = requests.post(f"{node.url}/v2/repository/models/sent/load", json={"parameters": parameters}, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert requests.get(f"{node.url}/v2/health/ready", timeout=10).ok
    assert not any(Path(d, "sent").exists() for d in _leftovers())  # nothing left behind


def test_grpc_refusal_is_invalid_argument(node: RunningNode) -> None:
    client = _grpc(node)
    with pytest.raises(InferenceServerException, match="need a 'config' parameter"):
        client.load_model("sent", files={"file:1/model.onnx": MODEL})
    client.close()


def test_through_a_gateway(node: RunningNode, gateway_config: Callable[[list[str]], Any], tmp_path: Path) -> None:
    with RunningNode(gateway_config([node.url])) as gw:
        wait_for(lambda: requests.get(f"{gw.url}/v2/health/ready", timeout=5).ok, "the gateway to be ready")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{gw.config.server.grpc_port}")
        client.load_model("sent", config=json.dumps(CONFIG), files={"file:1/model.onnx": MODEL})
        assert _probs(_http(node), httpclient, "sent").shape == (2, 3)  # loaded on the node
        client.unload_model("sent")
        client.close()


def test_poll_mode_keeps_a_model_sent_with_its_files(tmp_path: Path) -> None:
    """A model loaded with files is not on disk; the repository poll must not unload it as gone."""
    config = node_config(tmp_path, repository={"control_mode": "poll", "poll_interval_s": 0.1})
    with RunningNode(config) as n:
        client = _http(n)
        client.load_model("sent", config=json.dumps(CONFIG), files={"file:1/model.onnx": MODEL})
        polls = 0

        def polled_a_few_times() -> bool:
            nonlocal polls
            polls += 1
            return polls > 5 and client.is_model_ready("sent")

        wait_for(polled_a_few_times, "several polls", interval_s=0.1)
        assert _probs(client, httpclient, "sent").shape == (2, 3)
        client.close()
