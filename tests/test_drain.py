"""A real ``dlinfer-core`` process: SIGTERM drains without losing admitted
requests, and a client that disconnects takes its queued request with it.

The slow model comes from the single-file plugin in ``scheduler_plugins/``
(loaded through ``plugins_dir``). Only built-in plugins and that folder are
loaded, so the node starts the same whatever else is installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import requests
import tomli_w

from dlinfer.testing import free_port, wait_for, write_model
from dlinfer.testing import metric_value as metric

PLUGINS_DIR = Path(__file__).parent / "scheduler_plugins"
SLOW = {"slow.toml": b""}


class NodeProcess:
    """``dlinfer-core`` serving ``repository`` in a subprocess."""

    def __init__(self, repository: Path, folder: Path, **server: Any) -> None:
        port = free_port()
        node = {
            "server": {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), **server},
            "repository": {"path": str(repository)},
            "plugins": {"plugins_dir": str(PLUGINS_DIR)},
            "threads": {"intra_op": 1},
        }
        config = folder / "node.toml"
        config.write_text(tomli_w.dumps(node))
        exe = shutil.which("dlinfer-core", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "dlinfer.cli"]
        env = {**os.environ, "DLINFER_DISABLE_PLUGIN_AUTOLOAD": "1"}
        self.log = (folder / "node.log").open("wb")
        self.proc = subprocess.Popen(
            [*cmd, "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.log_path = folder / "node.log"
        wait_for(self._ready, "the node to become ready", timeout_s=60)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        try:
            return requests.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


def body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def post(url: str, model: str, x: np.ndarray) -> requests.Response:
    return requests.post(f"{url}/v2/models/{model}/infer", json=body(x), timeout=60)


def y_of(resp: requests.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    out = resp.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_sigterm_drains_every_admitted_request(tmp_path: Path) -> None:
    root = tmp_path / "models"
    # 4 requests of 1 s: the drain lasts long enough to observe readiness and refusals during it.
    write_model(root, "slow", 1, SLOW, config={"instance_count": 1, "parameters": {"delay_s": 1.0}})
    node = NodeProcess(root, tmp_path, drain_timeout_s=30)
    try:
        xs = [np.full((1, 2), i, dtype=np.float32) for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, node.url, "slow", x) for x in xs]
            wait_for(lambda: metric(node.url, "dlinfer_inference_inflight_request_count", "slow") == 4, "4 in flight")
            node.proc.send_signal(signal.SIGTERM)
            # Draining: readiness is false and new requests are refused, while the admitted ones finish.
            wait_for(
                lambda: requests.get(f"{node.url}/v2/health/ready", timeout=5).status_code == 503, "readiness false"
            )
            refused = post(node.url, "slow", xs[0])
            assert refused.status_code == 503
            assert "shutting down" in refused.json()["error"]
            for x, fut in zip(xs, futures, strict=True):
                np.testing.assert_array_equal(y_of(fut.result()), x * 2 + 1)
        assert node.proc.wait(timeout=60) == 0
    finally:
        node.stop()


def test_drain_timeout_bounds_shutdown(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "slow", 1, SLOW, config={"parameters": {"delay_s": 3.0}})
    node = NodeProcess(root, tmp_path, drain_timeout_s=0.2)
    try:
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(post, node.url, "slow", np.ones((1, 2), np.float32))
            wait_for(lambda: metric(node.url, "dlinfer_inference_inflight_request_count", "slow") == 1, "in flight")
            node.proc.send_signal(signal.SIGTERM)
            assert node.proc.wait(timeout=60) == 0
            with pytest.raises(requests.ConnectionError):
                fut.result()  # the request outlived the drain timeout: its connection was closed
    finally:
        node.stop()


def grpc_infer(port: int, model: str, x: np.ndarray) -> grpc.StatusCode:
    """One V2 gRPC inference; the status it ended with."""
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
    inp = tgrpc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        client.infer(model, [inp], client_timeout=60)
        return grpc.StatusCode.OK
    except InferenceServerException as exc:
        assert "server is shutting down" in exc.message(), exc.message()
        return getattr(grpc.StatusCode, exc.status().removeprefix("StatusCode."))
    finally:
        client.close()


def test_requests_still_queued_at_the_drain_timeout_get_503(tmp_path: Path) -> None:
    """At the drain timeout, queued requests would never run: each is answered 503 / UNAVAILABLE
    before the port closes, on the direct scheduler and the batcher alike."""
    root = tmp_path / "models"
    for name, batching in (("direct", None), ("batched", {})):
        cfg: dict[str, Any] = {"max_batch_size": 1, "instance_count": 1, "parameters": {"delay_s": 3.0}}
        if batching is not None:
            cfg["dynamic_batching"] = batching
        write_model(root, name, 1, SLOW, config=cfg)
    node = NodeProcess(root, tmp_path, drain_timeout_s=0.5)
    grpc_port = tomllib.loads((tmp_path / "node.toml").read_text())["server"]["grpc_port"]
    x = np.ones((1, 2), np.float32)

    def inflight(model: str) -> float:
        return metric(node.url, "dlinfer_inference_inflight_request_count", model)

    try:
        with ThreadPoolExecutor(8) as pool:
            running = [pool.submit(post, node.url, m, x) for m in ("direct", "batched")]
            wait_for(lambda: inflight("direct") == 1 and inflight("batched") == 1, "one running request per model")
            queued = [pool.submit(post, node.url, m, x) for m in ("direct", "batched") for _ in range(2)]
            queued_grpc = [pool.submit(grpc_infer, grpc_port, m, x) for m in ("direct", "batched")]
            wait_for(lambda: inflight("direct") == 4 and inflight("batched") == 4, "three requests queued per model")
            node.proc.send_signal(signal.SIGTERM)
            for fut in queued:
                resp = fut.result()
                assert resp.status_code == 503, resp.text
                assert resp.json() == {"error": "server is shutting down"}
            assert [f.result() for f in queued_grpc] == [grpc.StatusCode.UNAVAILABLE] * 2
            for fut in running:  # running past the timeout: cut off, as before
                with pytest.raises(requests.ConnectionError):
                    fut.result()
        assert node.proc.wait(timeout=60) == 0
    finally:
        node.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    folder = tmp_path_factory.mktemp("disconnect")
    root = folder / "models"
    for name, batching in (("direct", None), ("batched", {})):
        cfg: dict[str, Any] = {
            "max_batch_size": 4,
            "instance_count": 1,
            "parameters": {"delay_s": 2.0, "record": str(folder / f"{name}.log")},
        }
        if batching is not None:
            cfg["dynamic_batching"] = batching
        write_model(root, name, 1, SLOW, config=cfg)
    n = NodeProcess(root, folder)
    n.folder = folder  # type: ignore[attr-defined]
    yield n
    assert n.stop() == 0


@pytest.mark.parametrize("model", ["direct", "batched"])
def test_client_disconnect_drops_queued_request(node: NodeProcess, model: str) -> None:
    record: Path = node.folder / f"{model}.log"  # type: ignore[attr-defined]

    def calls() -> list[int]:
        return [int(v) for v in record.read_text().split()] if record.exists() else []

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, node.url, model, np.ones((1, 2), np.float32))
        wait_for(lambda: calls() == [1], "the first request to reach the model")
        payload = orjson.dumps(body(np.zeros((1, 2), np.float32)))
        with socket.create_connection(("127.0.0.1", node.port)) as sock:
            sock.sendall(
                f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            wait_for(lambda: metric(node.url, "dlinfer_inference_pending_request_count", model) == 1, "queued")
        wait_for(
            lambda: metric(node.url, "dlinfer_inference_request_failure_total", model, reason="canceled") == 1,
            "the disconnected request to be cancelled",
        )
        assert metric(node.url, "dlinfer_inference_pending_request_count", model) == 0
        assert first.result().status_code == 200
        # FIFO: had the cancelled request stayed queued it would run before this one.
        assert post(node.url, model, np.ones((1, 2), np.float32)).status_code == 200
    assert calls() == [1, 1]
