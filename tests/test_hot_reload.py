"""Hot reload in poll mode while real clients keep sending requests."""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import tomli_w
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dlinfer import testing
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, onnx_slow_model, write_model

X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)


def expected_probs(seed: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_linear_model(seed=seed), providers=["CPUExecutionProvider"])
    return session.run(["probs"], {"x": X})[0]


wait_for = functools.partial(testing.wait_for, timeout_s=20, interval_s=0.05)


class Load:
    """Clients looping requests on a thread each; records every answer and every failure."""

    def __init__(self, node: RunningNode) -> None:
        self.node = node
        self.answers: list[tuple[str, np.ndarray]] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._http), threading.Thread(target=self._grpc)]

    def _http(self) -> None:
        client = httpclient.InferenceServerClient(self.node.url.removeprefix("http://"))
        inp = httpclient.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(X)
        self._loop(lambda: client.infer("linear", [inp]), lambda r: r.get_response()["model_version"])

    def _grpc(self) -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.node.config.server.grpc_port}")
        inp = grpcclient.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(X)
        self._loop(lambda: client.infer("linear", [inp]), lambda r: r.get_response().model_version)
        client.close()

    def _loop(self, call: Callable[[], Any], version: Callable[[Any], str]) -> None:
        while not self._stop.is_set():
            try:
                result = call()
                self.answers.append((version(result), result.as_numpy("probs")))
            except Exception as exc:
                self.failures.append(exc)

    def latest(self) -> str | None:
        return self.answers[-1][0] if self.answers else None

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        wait_for(lambda: len(self.answers) > 10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


@pytest.fixture
def poll_node(tmp_path: Path) -> Iterator[RunningNode]:
    root = tmp_path / "models"
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model(seed=1)})
    config = node_config(root, repository={"control_mode": "poll", "poll_interval_s": 0.1})
    with RunningNode(config) as node:
        yield node


def index(node: RunningNode) -> dict[tuple[str, str], dict[str, Any]]:
    rows = requests.post(f"{node.url}/v2/repository/index", timeout=10).json()
    return {(r["name"], r.get("version", "")): r for r in rows}


def ready_versions(node: RunningNode, name: str = "linear") -> set[str]:
    return {v for (n, v), r in index(node).items() if n == name and r["state"] == "READY"}


def test_new_version_serves_while_clients_loop(poll_node: RunningNode) -> None:
    root = poll_node.config.repository_path
    with Load(poll_node) as load:
        write_model(root, "linear", 2, {"model.onnx": onnx_linear_model(seed=2)})
        wait_for(lambda: load.latest() == "2")
        n = len(load.answers)
        wait_for(lambda: len(load.answers) > n + 20)  # both clients moved on to the new version
        shutil.rmtree(root / "linear" / "2")  # and back: version 1 is the latest again
        wait_for(lambda: load.latest() == "1")
        n = len(load.answers)
        wait_for(lambda: len(load.answers) > n + 20)
    assert load.failures == []
    for version, probs in load.answers:
        np.testing.assert_array_equal(probs, expected_probs(int(version)))
    seen = [v for v, _ in load.answers]
    assert seen[0] == "1" and "2" in seen and seen[-1] == "1"
    assert ready_versions(poll_node) == {"1"}


def test_config_change_reloads_with_the_new_version_policy(poll_node: RunningNode) -> None:
    root = poll_node.config.repository_path
    write_model(root, "linear", 2, {"model.onnx": onnx_linear_model(seed=2)})
    wait_for(lambda: ready_versions(poll_node) == {"2"})
    (root / "linear" / "config.toml").write_text(tomli_w.dumps({"version_policy": {"all": True}}))
    wait_for(lambda: ready_versions(poll_node) == {"1", "2"})
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.reshape(-1).tolist()}]}
    for v in (1, 2):
        doc = requests.post(f"{poll_node.url}/v2/models/linear/versions/{v}/infer", json=body, timeout=10).json()
        probs = next(o for o in doc["outputs"] if o["name"] == "probs")
        np.testing.assert_allclose(np.array(probs["data"], np.float32).reshape(2, 3), expected_probs(v), rtol=1e-6)
    (root / "linear" / "config.toml").write_text(tomli_w.dumps({"version_policy": {"specific": [1]}}))
    wait_for(lambda: ready_versions(poll_node) == {"1"})


def test_models_appear_and_disappear(poll_node: RunningNode) -> None:
    root = poll_node.config.repository_path
    write_model(root, "second", 1, {"model.onnx": onnx_linear_model(seed=5)})
    wait_for(lambda: ready_versions(poll_node, "second") == {"1"})
    assert requests.get(f"{poll_node.url}/v2/models/second/ready", timeout=10).status_code == 200
    shutil.rmtree(root / "second")
    wait_for(lambda: not any(n == "second" for n, _ in index(poll_node)))
    assert requests.get(f"{poll_node.url}/v2/models/second/ready", timeout=10).status_code == 404


def test_broken_new_version_leaves_the_old_one_serving(poll_node: RunningNode) -> None:
    root = poll_node.config.repository_path
    write_model(root, "linear", 2, {"model.onnx": b"not an onnx file"})
    wait_for(lambda: index(poll_node).get(("linear", "2"), {}).get("state") == "UNAVAILABLE")
    assert "ONNX Runtime cannot load it" in index(poll_node)[("linear", "2")]["reason"]
    assert ready_versions(poll_node) == {"1"}
    (root / "linear" / "2" / "model.onnx").write_bytes(onnx_linear_model(seed=2))  # fixed in place
    wait_for(lambda: ready_versions(poll_node) == {"2"})


def test_unloaded_through_the_api_stays_unloaded(poll_node: RunningNode) -> None:
    url = poll_node.url
    assert requests.post(f"{url}/v2/repository/models/linear/unload", timeout=10).status_code == 200
    time.sleep(0.5)  # several poll intervals
    assert requests.get(f"{url}/v2/models/linear/ready", timeout=10).status_code != 200
    assert requests.post(f"{url}/v2/repository/models/linear/load", timeout=10).status_code == 200
    assert requests.get(f"{url}/v2/models/linear/ready", timeout=10).status_code == 200


def test_explicit_reload_while_clients_loop(tmp_path: Path) -> None:
    """Explicit mode: a version added on disk is picked up by the load call, without failures."""
    root = tmp_path / "models"
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model(seed=1)})
    with RunningNode(node_config(root)) as node, Load(node) as load:
        write_model(root, "linear", 2, {"model.onnx": onnx_linear_model(seed=2)})
        time.sleep(0.3)
        assert load.latest() == "1"  # explicit mode does not watch the disk
        assert requests.post(f"{node.url}/v2/repository/models/linear/load", timeout=30).status_code == 200
        wait_for(lambda: load.latest() == "2")
    assert load.failures == []
    assert {v for v, _ in load.answers} == {"1", "2"}


def test_http_client_load_unload_round_trip_with_token(tmp_path: Path) -> None:
    """Explicit control with tritonclient.http, behind the control token."""
    from tritonclient.utils import InferenceServerException

    root = tmp_path / "models"
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model(seed=3)})
    config = node_config(root, repository={"control_token": "t0ken"})
    with RunningNode(config) as node:
        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
        auth = {"Authorization": "Bearer t0ken"}
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.unload_model("linear")
        client.unload_model("linear", headers=auth)
        assert not client.is_model_ready("linear")
        assert {r["name"]: r["state"] for r in client.get_model_repository_index()}["linear"] == "UNAVAILABLE"
        client.load_model("linear", headers=auth)
        assert client.is_model_ready("linear")
        inp = httpclient.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(X)
        np.testing.assert_array_equal(client.infer("linear", [inp]).as_numpy("probs"), expected_probs(3))


def test_in_flight_request_finishes_on_the_old_version(tmp_path: Path) -> None:
    from dlinfer.server import REPOSITORY

    root = tmp_path / "models"
    write_model(root, "slow", 1, {"model.onnx": onnx_slow_model(1)})
    with RunningNode(node_config(root, limits={"max_batch_size": 4096})) as node:
        repo = node.app[REPOSITORY]
        old = repo.get("slow")
        x = np.full((4096, 512), 0.01, np.float32)  # seconds of matrix work
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [4096, 512],
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ]
            }
        )
        answers: dict[str, Any] = {}

        def slow_request() -> None:
            answers["slow"] = requests.post(
                f"{node.url}/v2/models/slow/infer",
                data=header + x.tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
                timeout=120,
            )

        def reload() -> None:
            answers["load"] = requests.post(f"{node.url}/v2/repository/models/slow/load", timeout=120)

        t_slow = threading.Thread(target=slow_request)
        t_slow.start()
        wait_for(lambda: old.inflight == 1)
        write_model(root, "slow", 2, {"model.onnx": onnx_slow_model(2)})
        t_load = threading.Thread(target=reload)
        t_load.start()
        wait_for(lambda: repo.get("slow").version == 2)  # swapped while the old request still runs
        assert old.inflight == 1 and t_load.is_alive()  # the load waits for it before closing version 1
        small = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 512], "data": [0.5] * 512}]}
        r = requests.post(f"{node.url}/v2/models/slow/infer", json=small, timeout=60)
        assert r.status_code == 200 and r.json()["model_version"] == "2"
        t_slow.join(120)
        t_load.join(120)
        # Both requests are counted, including the one served while version 1 was still draining.
        metrics = requests.get(f"{node.url}/metrics", timeout=10).text
        assert 'dlinfer_inference_request_success_total{model="slow",version="2"} 1.0' in metrics
        assert 'dlinfer_inference_request_success_total{model="slow",version="1"}' not in metrics  # unloaded
    assert answers["slow"].status_code == 200 and answers["slow"].json()["model_version"] == "1"
    assert answers["load"].status_code == 200
