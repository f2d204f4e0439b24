"""While a node drains, every frontend refuses new inference requests the same way."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from dlinfer.server import STATE
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_model


def test_http_and_grpc_refuse_new_requests_while_draining(tmp_path: Path) -> None:
    write_model(tmp_path, "linear", 1, {"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(tmp_path)) as node:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
        inp = tgrpc.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        assert client.infer("linear", [inp]).as_numpy("probs").shape == (1, 3)

        node.app[STATE].draining = True  # what SIGTERM does first
        r = requests.post(f"{node.url}/v2/models/linear/infer", json=body)
        assert r.status_code == 503 and r.json() == {"error": "server is shutting down"}
        assert requests.get(f"{node.url}/v2/health/ready").status_code == 503
        with pytest.raises(InferenceServerException) as info:
            client.infer("linear", [inp])
        assert info.value.status() == "StatusCode." + grpc.StatusCode.UNAVAILABLE.name
        assert "server is shutting down" in info.value.message()
        client.close()
