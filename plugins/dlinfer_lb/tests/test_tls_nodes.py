"""A gateway in front of nodes that serve over TLS and accept only clients with a certificate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import trustme

from dlinfer.api import ConfigError
from dlinfer.api.testing import RunningNode, free_ports, node_config, onnx_identity_model, write_model
from dlinfer_lb.settings import load_settings

X = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files = {name: folder / name for name in ("ca.pem", "node.pem", "node.key", "gw.pem", "gw.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    node = ca.issue_cert("127.0.0.1")
    node.cert_chain_pems[0].write_to_path(files["node.pem"])
    node.private_key_pem.write_to_path(files["node.key"])
    gateway = ca.issue_cert("gateway.dlinfer.example")
    gateway.cert_chain_pems[0].write_to_path(files["gw.pem"])
    gateway.private_key_pem.write_to_path(files["gw.key"])
    return files


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[RunningNode]:
    repo = tmp_path_factory.mktemp("models")
    write_model(repo, "identity", 1, {"model.onnx": onnx_identity_model("FP32", ["batch", 3])})
    http, grpc = free_ports(2)
    tls = {"cert_file": str(pki["node.pem"]), "key_file": str(pki["node.key"]), "client_ca_file": str(pki["ca.pem"])}
    with RunningNode(node_config(repo, server={"http_port": http, "grpc_port": grpc, "tls": tls})) as n:
        yield n


def test_gateway_reaches_mutual_tls_nodes_over_http_and_grpc(tls_node, pki, start_gateway, helpers) -> None:
    node_grpc = f"127.0.0.1:{tls_node.config.server.grpc_port}"
    gw = start_gateway(
        nodes=[{"url": tls_node.url, "grpc": node_grpc}],
        tls={"ca_file": str(pki["ca.pem"]), "cert_file": str(pki["gw.pem"]), "key_file": str(pki["gw.key"])},
    )
    helpers.wait_for(lambda: helpers.nodes_status(gw.url)[tls_node.url]["healthy"], what="the TLS node healthy")
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.ravel().tolist()}]}
    r = requests.post(f"{gw.url}/v2/models/identity/infer", json=body, timeout=10)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == X.ravel().tolist()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{gw.config.server.grpc_port}")
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(X)
    np.testing.assert_array_equal(client.infer("identity", [inp]).as_numpy("y"), X)


def test_gateway_without_a_client_certificate_is_refused_by_the_node(tls_node, pki, start_gateway, helpers) -> None:
    gw = start_gateway(nodes=[tls_node.url], tls={"ca_file": str(pki["ca.pem"])})
    helpers.wait_for(lambda: helpers.nodes_status(gw.url)[tls_node.url]["last_error"], what="a failed check")
    status = helpers.nodes_status(gw.url)[tls_node.url]
    assert not status["healthy"] and not status["models"]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.ravel().tolist()}]}
    r = requests.post(f"{gw.url}/v2/models/identity/infer", json=body, timeout=20)
    # The handshake fails, so the gateway never learns the node's models: nothing is forwarded.
    assert r.status_code in (404, 503) and "error" in r.json()


def test_half_a_client_certificate_names_the_missing_key(tmp_path: Path, helpers) -> None:
    config = helpers.gateway_config(tmp_path, nodes=["https://127.0.0.1:9"], tls={"cert_file": "gw.pem"})
    with pytest.raises(ConfigError, match=r"plugins\.lb\.tls\.key_file: required with the other"):
        load_settings(config)


def test_a_tls_node_registers_itself_and_is_reached_over_mutual_tls(pki, start_gateway, helpers, tmp_path) -> None:
    ca, gw_cert = str(pki["ca.pem"]), {"cert_file": str(pki["gw.pem"]), "key_file": str(pki["gw.key"])}
    gw = start_gateway(registration_token="s3cret", tls={"ca_file": ca, **gw_cert})
    repo = tmp_path / "models"
    write_model(repo, "identity", 1, {"model.onnx": onnx_identity_model("FP32", ["batch", 4])})  # helpers.X
    http, grpc = free_ports(2)
    server = {
        "http_port": http,
        "grpc_port": grpc,
        "tls": {"cert_file": str(pki["node.pem"]), "key_file": str(pki["node.key"]), "client_ca_file": ca},
    }
    register = {"gateways": [gw.url], "token": "s3cret", "interval_s": 0.1, "ttl_s": 2.0}
    with RunningNode(node_config(repo, server=server, plugins={"lb": {"register": register}})) as node:
        assert node.url.startswith("https://")
        helpers.wait_for(
            lambda: helpers.nodes_status(gw.url).get(node.url, {}).get("admitted") is True,
            what="the node to register under its https:// address and be admitted",
        )
        assert helpers.send(gw.url, "identity", 10).count(200) == 10
