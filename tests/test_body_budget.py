"""limits.max_inflight_body_bytes: request bodies held at once, over HTTP and gRPC together."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dlinfer.server.body_budget import BODY_BUDGET
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, wait_for, write_model

X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def _head(port: int, size: int) -> socket.socket:
    """A connection that has sent an infer request's headers, announcing a body of ``size`` bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    return s


def _response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("Content-Length", 0)):
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, body


def test_a_body_over_the_budget_is_refused_unread_while_another_is_held(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "lin", 1, {"model.onnx": onnx_linear_model()}, config={"max_batch_size": 128})
    with RunningNode(node_config(repo, limits={"max_inflight_body_bytes": 4096})) as node:
        port, budget = node.config.server.http_port, node.app[BODY_BUDGET]
        body = json.dumps(X).encode().ljust(3000)
        slow = _head(port, len(body))
        slow.sendall(body[:100])  # the rest comes later: its 3000 bytes stay reserved meanwhile
        wait_for(lambda: budget.held == 3000, "the slow body's reservation")

        refused = _head(port, 2000)  # no body sent: the answer must not wait for it
        status, headers, text = _response(refused)
        assert status == 503 and headers["Retry-After"] == "1"
        assert "limits.max_inflight_body_bytes (4096)" in json.loads(text)["error"]
        assert requests.post(f"{node.url}/v2/models/lin/infer", json=X).status_code == 200  # fits beside it

        # 1.6 KB of tensor: a message that would take the total past the budget.
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
        big = [grpcclient.InferInput("x", [100, 4], "FP32")]
        big[0].set_data_from_numpy(np.ones((100, 4), np.float32))
        with pytest.raises(InferenceServerException, match="max_inflight_body_bytes"):
            grpc.infer("lin", big)

        slow.sendall(body[100:])
        assert _response(slow)[0] == 200
        assert budget.held == 0
        assert grpc.infer("lin", big).as_numpy("probs").shape == (100, 3)
        slow.close()
        refused.close()
