"""One behaviour, every frontend: the same requests through V2 HTTP, V2 gRPC, TF-Serving REST
and TF-Serving gRPC, sent to a node directly and through a gateway in front of it, get the
same outcome (answer, or the same kind of refusal in each protocol's terms).

The node serves the ``slow`` test backend (``y = 2x + 1``, sleeping ``delay_s`` per call).
Real servers, real clients: requests, tritonclient's gRPC client and TF-Serving's stubs.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import requests

from dlinfer.api import BUILTIN_PLUGINS, Plugins, node_config_from_dict
from dlinfer.api.testing import RunningNode, free_port, node_config, wait_for, write_model
from dlinfer.testing import metric_value

from .test_scheduler import PLUGINS_DIR, SLOW

tf = pytest.importorskip("tensorflow")
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

FRONTENDS = ("v2_http", "v2_grpc", "tfs_rest", "tfs_grpc")
TARGETS = ("node", "gateway")
#: Outcome kinds, whatever the protocol.
HTTP_KINDS = {200: "ok", 400: "invalid", 404: "not_found", 429: "overloaded", 503: "unavailable", 504: "deadline"}
GRPC_KINDS = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline",
}
TENSOR_LIMIT = 64
BODY_TIMEOUT_S = 1.0


class Endpoints:
    """HTTP base URL and gRPC target of a node or a gateway, with a client per frontend."""

    def __init__(self, running: RunningNode) -> None:
        self.url = running.url
        self.target = f"127.0.0.1:{running.config.server.grpc_port}"
        self.channel = grpc.insecure_channel(self.target)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.status_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def infer(self, frontend: str, model: str, x: np.ndarray, timeout_us: int = 0) -> tuple[str, Any]:
        """(outcome kind, ``y`` or the error text) of one inference through ``frontend``."""
        return getattr(self, frontend)(model, x, timeout_us)

    def v2_http(self, model: str, x: np.ndarray, timeout_us: int) -> tuple[str, Any]:
        doc: dict[str, Any] = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
        }
        if timeout_us:
            doc["parameters"] = {"timeout": timeout_us}
        r = requests.post(f"{self.url}/v2/models/{model}/infer", json=doc, timeout=60)
        if r.status_code != 200:
            return HTTP_KINDS[r.status_code], r.json()["error"]
        out = r.json()["outputs"][0]
        return "ok", np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    def v2_grpc(self, model: str, x: np.ndarray, timeout_us: int) -> tuple[str, Any]:
        import tritonclient.grpc as tgrpc

        client = tgrpc.InferenceServerClient(self.target)
        inp = tgrpc.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        try:
            result = client.infer(model, [inp], timeout=timeout_us or None, client_timeout=60)
        except tgrpc.InferenceServerException as exc:
            code = grpc.StatusCode[str(exc.status()).removeprefix("StatusCode.")]
            return GRPC_KINDS[code], exc.message()
        finally:
            client.close()
        return "ok", result.as_numpy("y")

    def tfs_rest(self, model: str, x: np.ndarray, timeout_us: int) -> tuple[str, Any]:
        assert not timeout_us, "TF-Serving's REST API has no per-request deadline"
        r = requests.post(f"{self.url}/v1/models/{model}:predict", json={"inputs": {"x": x.tolist()}}, timeout=60)
        if r.status_code != 200:
            return HTTP_KINDS[r.status_code], r.json()["error"]
        return "ok", np.asarray(r.json()["outputs"], dtype=np.float32)

    def tfs_grpc(self, model: str, x: np.ndarray, timeout_us: int) -> tuple[str, Any]:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        try:
            resp = self.predict_stub.Predict(req, timeout=timeout_us / 1e6 if timeout_us else 60)
        except grpc.RpcError as exc:
            return GRPC_KINDS[exc.code()], exc.details()
        return "ok", tf.make_ndarray(resp.outputs["y"])

    def status(self, frontend: str, model: str) -> str:
        """The kind of answer to "is this model there and ready?" in ``frontend``'s terms."""
        if frontend == "v2_http":
            r = requests.get(f"{self.url}/v2/models/{model}/ready", timeout=10)
            return HTTP_KINDS[r.status_code] if r.status_code != 200 else str(r.json()["ready"])
        if frontend == "v2_grpc":
            import tritonclient.grpc as tgrpc

            client = tgrpc.InferenceServerClient(self.target)
            try:
                return str(client.is_model_ready(model))
            except tgrpc.InferenceServerException as exc:
                return GRPC_KINDS[grpc.StatusCode[str(exc.status()).removeprefix("StatusCode.")]]
            finally:
                client.close()
        if frontend == "tfs_rest":
            r = requests.get(f"{self.url}/v1/models/{model}", timeout=10)
            return HTTP_KINDS[r.status_code] if r.status_code != 200 else r.json()["model_version_status"][0]["state"]
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = model
        try:
            resp = self.status_stub.GetModelStatus(req, timeout=10)
        except grpc.RpcError as exc:
            return GRPC_KINDS[exc.code()]
        return get_model_status_pb2.ModelVersionStatus.State.Name(resp.model_version_status[0].state)


def _node_plugins(config: Any) -> Plugins:
    """Built-ins, the TF-Serving frontends and the ``plugins_dir`` slow backend."""
    import dlinfer_tf.plugin

    plugins = Plugins(config).load(entry_points=False)
    plugins.register(dlinfer_tf.plugin, "tf", "dlinfer-tf")
    return plugins


def _gateway_config(base: Any, node: RunningNode) -> Any:
    lb = {
        "enabled": True,
        "nodes": [{"url": node.url, "grpc": f"127.0.0.1:{node.config.server.grpc_port}"}],
        "health": {"interval_s": 0.2, "timeout_s": 5.0},
    }
    data = {
        "server": {"host": "127.0.0.1", "http_port": free_port(), "grpc_port": free_port()},
        "repository": {"path": "no-models"},
        "plugins": {"lb": lb},
        "limits": {"body_timeout_s": BODY_TIMEOUT_S},
    }
    return node_config_from_dict(data, source=str(base / "gateway.toml"), base_dir=str(base))


def _gateway_plugins(config: Any) -> Plugins:
    """A gateway with every built-in and the TF-Serving plugin loaded: the forwarding mode keeps
    the local frontends off without ``plugins.disable``."""
    import dlinfer_lb.plugin
    import dlinfer_tf.plugin

    plugins = Plugins(config).load(entry_points=False)
    plugins.register(dlinfer_tf.plugin, "tf", "dlinfer-tf")
    plugins.register(dlinfer_lb.plugin, "lb", "dlinfer-lb")
    return plugins


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Endpoints]]:
    assert "dlinfer.server.v2_http" in BUILTIN_PLUGINS
    root = tmp_path_factory.mktemp("models")
    write_model(root, "fast", 1, SLOW, config={"parameters": {"delay_s": 0.0}})
    # One instance, room for one queued request: two in flight fill it.
    write_model(
        root,
        "held",
        1,
        SLOW,
        config={"instance_count": 1, "max_queue_size": 1, "max_queue_wait_ms": 0, "parameters": {"delay_s": 6.0}},
    )
    write_model(root, "sleepy", 1, SLOW, config={"instance_count": 2, "parameters": {"delay_s": 1.0}})
    config = node_config(
        root,
        plugins={"plugins_dir": str(PLUGINS_DIR)},
        limits={"max_tensor_elements": TENSOR_LIMIT, "body_timeout_s": BODY_TIMEOUT_S},
    )
    base = tmp_path_factory.mktemp("gateway")
    with RunningNode(config, _node_plugins(config)) as node:
        gw_config = _gateway_config(base, node)
        with RunningNode(gw_config, _gateway_plugins(gw_config)) as gateway:
            out = {"node": Endpoints(node), "gateway": Endpoints(gateway)}
            wait_for(lambda: requests.get(f"{gateway.url}/v2/health/ready", timeout=5).ok, "the gateway to be ready")
            wait_for(lambda: out["gateway"].status("v2_http", "held") == "True", "the gateway to see the models")
            yield out
            for e in out.values():
                e.channel.close()


CASES = [(f, t) for f in FRONTENDS for t in TARGETS]
HTTP_INFER = ("/v2/models/fast/infer", "/v1/models/fast:predict")


@pytest.mark.parametrize(("frontend", "target"), CASES)
def test_the_same_answer(endpoints: dict[str, Endpoints], frontend: str, target: str) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    kind, y = endpoints[target].infer(frontend, "fast", x)
    assert kind == "ok", y
    np.testing.assert_allclose(y, 2 * x + 1)


@pytest.mark.parametrize(("frontend", "target"), CASES)
@pytest.mark.parametrize(
    ("model", "x", "kind", "text"),
    [
        ("nosuch", np.ones((1, 2), np.float32), "not_found", "nosuch"),
        ("fast", np.ones((1, 2, 2), np.float32), "invalid", "x"),
        ("fast", np.ones((1, TENSOR_LIMIT + 1), np.float32), "invalid", "max_tensor_elements"),
    ],
    ids=["unknown-model", "wrong-rank", "over-tensor-limit"],
)
def test_the_same_refusal(
    endpoints: dict[str, Endpoints], frontend: str, target: str, model: str, x: np.ndarray, kind: str, text: str
) -> None:
    got, message = endpoints[target].infer(frontend, model, x)
    assert got == kind, message
    assert text in message


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_the_same_readiness(endpoints: dict[str, Endpoints], frontend: str) -> None:
    """Each protocol's own readiness answers, the same from the node and through the gateway."""
    for model in ("fast", "nosuch"):
        assert endpoints["node"].status(frontend, model) == endpoints["gateway"].status(frontend, model)
    assert endpoints["node"].status(frontend, "fast") in ("True", "AVAILABLE")


def test_a_full_queue_is_refused_alike(endpoints: dict[str, Endpoints]) -> None:
    """With the model's one instance busy and its one queue slot taken, every frontend, direct and
    through the gateway, refuses at once with its protocol's "overloaded"."""
    node = endpoints["node"]
    x = np.ones((1, 2), np.float32)
    held: list[tuple[str, Any]] = []
    threads = [threading.Thread(target=lambda: held.append(node.infer("v2_http", "held", x))) for _ in range(2)]
    threads[0].start()
    wait_for(lambda: metric_value(node.url, "dlinfer_inference_inflight_request_count", "held") == 1, "one running")
    threads[1].start()
    wait_for(lambda: metric_value(node.url, "dlinfer_inference_pending_request_count", "held") == 1, "one queued")
    outcomes = {(f, t): endpoints[t].infer(f, "held", x)[0] for f, t in CASES}
    for t in threads:
        t.join()
    assert outcomes == dict.fromkeys(CASES, "overloaded")
    assert [kind for kind, _ in held] == ["ok", "ok"]


@pytest.mark.parametrize(("frontend", "target"), [(f, t) for f in ("v2_http", "v2_grpc") for t in TARGETS])
def test_the_same_deadline(endpoints: dict[str, Endpoints], frontend: str, target: str) -> None:
    """The V2 ``timeout`` parameter bounds the request the same way over HTTP and gRPC, direct or forwarded."""
    kind, message = endpoints[target].infer(frontend, "sleepy", np.ones((1, 2), np.float32), timeout_us=200_000)
    assert kind == "deadline", message


def _half_sent(url: str, path: str) -> socket.socket:
    """A connection that sent an HTTP request's headers and half of its JSON body."""
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    conn.sendall(head.encode() + b'{"inputs": [')
    return conn


@pytest.mark.parametrize(("path", "target"), [(p, t) for p in HTTP_INFER for t in TARGETS])
def test_the_same_body_timeout(endpoints: dict[str, Endpoints], path: str, target: str) -> None:
    """A body that stops arriving gets 408 after ``limits.body_timeout_s``, from a node and a gateway,
    over V2 and TF-Serving REST alike."""
    conn = _half_sent(endpoints[target].url, path)
    try:
        status = conn.recv(64).split(b" ")[1]
    finally:
        conn.close()
    assert status == b"408"


def test_a_request_being_read_counts_in_flight(endpoints: dict[str, Endpoints]) -> None:
    """Admitted before its body arrives, a request counts as queued and in flight at once, so drain
    and unload wait for it (it was counted only after decoding)."""
    node = endpoints["node"]
    conn = _half_sent(node.url, "/v2/models/fast/infer")
    try:
        wait_for(lambda: metric_value(node.url, "dlinfer_inference_inflight_request_count", "fast") == 1, "in flight")
        assert metric_value(node.url, "dlinfer_inference_pending_request_count", "fast") == 1
    finally:
        conn.close()
    wait_for(lambda: metric_value(node.url, "dlinfer_inference_inflight_request_count", "fast") == 0, "released")
