"""While a node drains, every frontend refuses new inference requests the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from dlinfer.config import NodeConfig
from dlinfer.server import STATE
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, wait_for, write_model


def test_http_and_grpc_refuse_new_requests_while_draining(tmp_path: Path) -> None:
    write_model(tmp_path, "linear", 1, {"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(tmp_path)) as node:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
        inp = tgrpc.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        assert client.infer("linear", [inp]).as_numpy("probs").shape == (1, 3)

        assert client.is_server_ready() and client.is_model_ready("linear")
        node.app[STATE].draining = True  # what SIGTERM does first
        # Readiness is false on every frontend alike.
        assert not client.is_server_ready() and not client.is_model_ready("linear")
        model_ready = requests.get(f"{node.url}/v2/models/linear/ready")
        assert model_ready.status_code == 400 and model_ready.json()["error"] == "server is shutting down"
        r = requests.post(f"{node.url}/v2/models/linear/infer", json=body)
        assert r.status_code == 503 and r.json() == {"error": "server is shutting down"}
        assert requests.get(f"{node.url}/v2/health/ready").status_code == 503
        with pytest.raises(InferenceServerException) as info:
            client.infer("linear", [inp])
        assert info.value.status() == "StatusCode." + grpc.StatusCode.UNAVAILABLE.name
        assert "server is shutting down" in info.value.message()
        client.close()


def test_a_draining_gateway_is_not_ready_on_either_port(
    tmp_path: Path, gateway_config: Callable[[list[str]], NodeConfig]
) -> None:
    write_model(tmp_path / "models", "linear", 1, {"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(tmp_path / "models")) as node, RunningNode(gateway_config([node.url])) as gateway:
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{gateway.config.server.grpc_port}")
        wait_for(lambda: client.is_model_ready("linear"), "the gateway to see the node's model")
        assert client.is_server_ready()

        gateway.app[STATE].draining = True
        assert not client.is_server_ready() and not client.is_model_ready("linear")
        assert requests.get(f"{gateway.url}/v2/health/ready").status_code == 503
        model_ready = requests.get(f"{gateway.url}/v2/models/linear/ready")
        assert model_ready.status_code == 400 and model_ready.json()["error"] == "server is shutting down"
        client.close()
