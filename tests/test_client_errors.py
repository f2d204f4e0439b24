"""What clients see of errors: paths inside the model repository, never the server's own."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_model


def test_load_errors_name_files_relative_to_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "corrupt", 1, {"model.onnx": b"\x08\x01garbage"})
    write_model(repo, "bad_toml", 1, {"model.onnx": onnx_linear_model()})
    (repo / "bad_toml" / "config.toml").write_text("max_batch_size = [\n")
    root = str(repo.resolve())
    with RunningNode(node_config(repo)) as node:
        index = {row["name"]: row["reason"] for row in requests.post(f"{node.url}/v2/repository/index").json()}
        assert "corrupt/1/model.onnx" in index["corrupt"]
        assert "bad_toml/config.toml: invalid TOML" in index["bad_toml"]
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
        grpc_reasons = [m.reason for m in grpc.get_model_repository_index().models]
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
        infer = requests.post(f"{node.url}/v2/models/corrupt/infer", json=body)
        load = requests.post(f"{node.url}/v2/repository/models/bad_toml/load")
    assert infer.status_code == 503 and "corrupt/1/model.onnx" in infer.json()["error"]
    assert load.status_code == 400 and "bad_toml/config.toml" in load.json()["error"]
    for text in [*index.values(), *grpc_reasons, infer.text, load.text]:
        assert root not in text and str(tmp_path) not in text


def _raw_http(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is (no client would send it) and return the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        return s.recv(4096).split(b"\r\n", 1)[0]


def test_malformed_requests_are_not_logged_as_server_faults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Clients' mistakes get their 4xx and at most a quiet line: no ERROR, no traceback to flood the log."""
    repo = tmp_path / "models"
    write_model(repo, "lin", 1, {"model.onnx": onnx_linear_model()}, config={"max_batch_size": 8})
    caplog.set_level(logging.DEBUG)
    with RunningNode(node_config(repo)) as node:
        infer, port = f"{node.url}/v2/models/lin/infer", node.config.server.http_port
        shape = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}]}
        binary = {"Inference-Header-Content-Length": "99", "Content-Type": "application/octet-stream"}
        statuses = [
            requests.post(infer, data=b"{nope").status_code,
            requests.post(infer, json=shape).status_code,
            requests.post(infer, data=b'{"inputs": []}', headers=binary).status_code,
            requests.post(f"{node.url}/v1/models/lin:predict", data=b"{nope").status_code,
        ]
        post = b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\n"
        lines = [
            _raw_http(port, post + b"Content-Length: abc\r\n\r\n"),
            _raw_http(port, post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
            _raw_http(port, b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n"),
        ]
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
        x = grpcclient.InferInput("x", [1, 5], "FP32")
        x.set_data_from_numpy(np.zeros((1, 5), np.float32))
        with pytest.raises(InferenceServerException, match="does not match"):
            grpc.infer("lin", [x])
    assert statuses == [400, 400, 400, 400]
    assert all(line.split()[1] == b"400" for line in lines), lines
    loud = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == []
