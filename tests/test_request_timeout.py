"""The per-request ``timeout`` parameter over HTTP and gRPC, on a model slow enough to exceed it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.testing import RunningNode, node_config, onnx_slow_model, write_model

SLOW = np.full((4096, 512), 0.01, np.float32)  # seconds of matrix work
QUICK = np.full((1, 512), 0.5, np.float32)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root: Path = tmp_path_factory.mktemp("timeout") / "models"
    write_model(root, "slow", 1, {"model.onnx": onnx_slow_model()})
    with RunningNode(node_config(root, limits={"max_batch_size": 4096})) as n:
        yield n


def test_http_timeout_parameter(node: RunningNode) -> None:
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"), network_timeout=120)
    slow = httpclient.InferInput("x", list(SLOW.shape), "FP32")
    slow.set_data_from_numpy(SLOW)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("slow", [slow], timeout=100_000)  # microseconds
    assert exc.value.status() == "504" and "slow" in exc.value.message()
    quick = httpclient.InferInput("x", list(QUICK.shape), "FP32")
    quick.set_data_from_numpy(QUICK)
    assert client.infer("slow", [quick], timeout=60_000_000).as_numpy("y").shape == (1, 512)


def test_grpc_timeout_parameter(node: RunningNode) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    slow = grpcclient.InferInput("x", list(SLOW.shape), "FP32")
    slow.set_data_from_numpy(SLOW)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("slow", [slow], timeout=100_000)
    assert exc.value.status() == "StatusCode.DEADLINE_EXCEEDED" and "slow" in exc.value.message()
    quick = grpcclient.InferInput("x", list(QUICK.shape), "FP32")
    quick.set_data_from_numpy(QUICK)
    assert client.infer("slow", [quick], client_timeout=60).as_numpy("y").shape == (1, 512)
    client.close()
