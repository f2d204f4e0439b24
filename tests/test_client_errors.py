"""What clients see of errors: paths inside the model repository, never the server's own."""

from __future__ import annotations

from pathlib import Path

import requests
import tritonclient.grpc as grpcclient

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
