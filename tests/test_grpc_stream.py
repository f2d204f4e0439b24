"""The V2 gRPC streaming extension (``ModelStreamInfer``) with tritonclient's stream API,
against a node and through a gateway."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dlinfer.api import node_config_from_dict
from dlinfer.api.testing import RunningNode, free_port, node_config, onnx_identity_model, wait_for, write_model
from dlinfer.server.streams import MAX_OUTSTANDING, answer_stream

N = 40


def _gateway(base: Path, node: RunningNode) -> Any:
    lb = {"enabled": True, "nodes": [{"url": node.url, "grpc": f"127.0.0.1:{node.config.server.grpc_port}"}]}
    data = {
        "server": {"host": "127.0.0.1", "http_port": free_port(), "grpc_port": free_port()},
        "repository": {"path": "no-models"},
        "plugins": {"lb": {**lb, "health": {"interval_s": 0.2}}},
    }
    return node_config_from_dict(data, source=str(base / "gateway.toml"), base_dir=str(base))


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("stream")
    write_model(root, "identity", 1, {"model.onnx": onnx_identity_model("FP32", ["batch", "n"])})
    with RunningNode(node_config(root)) as node:
        with RunningNode(_gateway(tmp_path_factory.mktemp("gateway"), node)) as gw:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{gw.config.server.grpc_port}")
            wait_for(lambda: client.is_model_ready("identity"), "the gateway to see the node's model")
            client.close()
            yield {
                "node": f"127.0.0.1:{node.config.server.grpc_port}",
                "gateway": f"127.0.0.1:{gw.config.server.grpc_port}",
            }


def _stream(target: str, requests: list[tuple[str, np.ndarray | None]]) -> dict[str, Any]:
    """Send ``(request_id, x)`` on one stream (``x`` None: an unknown model); answers by request id."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(target)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request_id, x in requests:
            data = x if x is not None else np.ones((1, 2), np.float32)
            inp = grpcclient.InferInput("x", list(data.shape), "FP32")
            inp.set_data_from_numpy(data)
            model = "identity" if x is not None else "nosuch"
            client.async_stream_infer(model, [inp], request_id=request_id)
        out: dict[str, Any] = {}
        errors: list[str] = []
        for _ in requests:
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                out[result.get_response().id] = result.as_numpy("y")
        out["errors"] = errors
        return out
    finally:
        client.stop_stream()
        client.close()


@pytest.mark.parametrize("target", ["node", "gateway"])
def test_many_requests_on_one_stream(targets: dict[str, str], target: str) -> None:
    xs = {f"r{i}": np.full((1, 3), i, np.float32) for i in range(N)}
    out = _stream(targets[target], list(xs.items()))
    assert out.pop("errors") == []
    assert set(out) == set(xs)
    for request_id, x in xs.items():
        np.testing.assert_array_equal(out[request_id], x)


@pytest.mark.parametrize("target", ["node", "gateway"])
def test_a_failed_request_does_not_end_the_stream(targets: dict[str, str], target: str) -> None:
    out = _stream(
        targets[target], [("a", np.ones((1, 2), np.float32)), ("bad", None), ("b", np.zeros((2, 2), np.float32))]
    )
    assert len(out["errors"]) == 1 and "nosuch" in out["errors"][0]
    np.testing.assert_array_equal(out["b"], np.zeros((2, 2), np.float32))
    np.testing.assert_array_equal(out["a"], np.ones((1, 2), np.float32))


@pytest.mark.parametrize("target", ["node", "gateway"])
def test_a_failed_request_names_its_id(targets: dict[str, str], target: str) -> None:
    """With many requests in flight, an error on the stream says which request failed."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(targets[target]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="nosuch", id="req-7")
        (answer,) = list(stub.ModelStreamInfer(iter([request]), timeout=30))
    assert "nosuch" in answer.error_message
    assert answer.infer_response.id == "req-7" and answer.infer_response.model_name == "nosuch"


def test_a_stream_is_not_read_past_its_outstanding_bound() -> None:
    """A client that sends without reading answers cannot make the server start (and hold) more
    than MAX_OUTSTANDING requests of its stream."""
    started = 0

    async def requests() -> AsyncIterator[bytes]:
        for _ in range(4 * MAX_OUTSTANDING):
            yield b"r"

    async def answer(raw: bytes) -> bytes:
        nonlocal started
        started += 1
        return raw

    async def scenario() -> tuple[int, int]:
        stream = answer_stream(requests(), answer)
        await anext(stream)  # one answer read, then none
        for _ in range(100):  # give the reader every chance to run ahead
            await asyncio.sleep(0)
        held = started
        rest = [a async for a in stream]
        return held, 1 + len(rest)

    held, total = asyncio.run(scenario())
    assert held <= MAX_OUTSTANDING + 1
    assert total == 4 * MAX_OUTSTANDING
