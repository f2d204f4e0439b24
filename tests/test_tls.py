"""TLS on the node's HTTP and gRPC ports, with and without client certificates, against real clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import trustme

from dlinfer import ConfigError
from dlinfer.config import load_node_config
from dlinfer.testing import RunningNode, free_ports, node_config, onnx_identity_model, write_model

X = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, the node's certificate for 127.0.0.1, and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("gateway@dlinfer.example")
    files = {
        "ca": folder / "ca.pem",
        "cert": folder / "node.pem",
        "key": folder / "node.key",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client.key",
    }
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    client.private_key_pem.write_to_path(files["client_key"])
    return files


def _node(root: Path, tls: dict[str, str]) -> RunningNode:
    http, grpc = free_ports(2)
    return RunningNode(node_config(root, server={"http_port": http, "grpc_port": grpc, "tls": tls}))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "id", 1, {"model.onnx": onnx_identity_model("FP32", ["batch", 3])})
    return root


@pytest.fixture(scope="module")
def tls_node(repo: Path, pki: dict[str, Path]) -> Iterator[RunningNode]:
    with _node(repo, {"cert_file": str(pki["cert"]), "key_file": str(pki["key"])}) as n:
        yield n


def _infer_json() -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.ravel().tolist()}]}


def test_https_with_the_ca_and_plain_http_refused(tls_node: RunningNode, pki: dict[str, Path]) -> None:
    assert tls_node.url.startswith("https://")
    r = requests.post(f"{tls_node.url}/v2/models/id/infer", json=_infer_json(), verify=pki["ca"], timeout=10)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == X.ravel().tolist()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{tls_node.url}/v2/health/ready", timeout=10)  # the system store does not know our CA
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(tls_node.url.replace("https://", "http://") + "/v2/health/ready", timeout=10)


def test_grpc_over_tls(tls_node: RunningNode, pki: dict[str, Path]) -> None:
    client = grpcclient.InferenceServerClient(
        f"127.0.0.1:{tls_node.config.server.grpc_port}", ssl=True, root_certificates=str(pki["ca"])
    )
    inp = grpcclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(X)
    np.testing.assert_array_equal(client.infer("id", [inp]).as_numpy("y"), X)


def test_client_certificate_required_when_a_client_ca_is_set(repo: Path, pki: dict[str, Path]) -> None:
    tls = {"cert_file": str(pki["cert"]), "key_file": str(pki["key"]), "client_ca_file": str(pki["ca"])}
    with _node(repo, tls) as node:
        url = f"{node.url}/v2/models/id/infer"
        with pytest.raises(requests.exceptions.RequestException):
            requests.post(url, json=_infer_json(), verify=pki["ca"], timeout=10)
        cert = (str(pki["client_cert"]), str(pki["client_key"]))
        r = requests.post(url, json=_infer_json(), verify=pki["ca"], cert=cert, timeout=10)
        assert r.status_code == 200
        port = node.config.server.grpc_port
        anonymous = grpcclient.InferenceServerClient(f"127.0.0.1:{port}", ssl=True, root_certificates=str(pki["ca"]))
        with pytest.raises(grpcclient.InferenceServerException):
            anonymous.is_server_ready()
        known = grpcclient.InferenceServerClient(
            f"127.0.0.1:{port}",
            ssl=True,
            root_certificates=str(pki["ca"]),
            private_key=str(pki["client_key"]),
            certificate_chain=str(pki["client_cert"]),
        )
        assert known.is_server_ready()


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"cert_file": "node.pem"}, r"server\.tls\.key_file: expected a PEM file path"),
        ({"client_ca_file": "ca.pem"}, r"server\.tls\.client_ca_file needs cert_file and key_file"),
        ({"cert_file": "missing.pem", "key_file": "node.key"}, r"server\.tls\.cert_file: cannot read .*missing\.pem"),
        ({"cert_file": "node.key", "key_file": "node.key"}, r"server\.tls\.cert_file/key_file: .*not a PEM"),
        (
            {"cert_file": "node.pem", "key_file": "node.key", "client_ca_file": "node.key"},
            r"server\.tls\.client_ca_file: node\.key holds no PEM CA",
        ),
    ],
)
def test_bad_tls_settings_name_the_key(
    tmp_path: Path, pki: dict[str, Path], tls: dict[str, str], expected: str
) -> None:
    from dlinfer.server.tls import tls_files

    for name in ("node.pem", "node.key", "ca.pem"):
        (tmp_path / name).write_bytes(pki[{"node.pem": "cert", "node.key": "key", "ca.pem": "ca"}[name]].read_bytes())
    lines = "".join(f'{k} = "{v}"\n' for k, v in tls.items())
    f = tmp_path / "node.toml"
    f.write_text(f"[server.tls]\n{lines}")
    config = load_node_config(f)  # relative paths resolve against the node.toml folder
    with pytest.raises(ConfigError, match=expected) as info:
        tls_files(config)
    assert str(f) in str(info.value)


def test_tls_is_off_by_default(tmp_path: Path) -> None:
    from dlinfer.server.tls import tls_files

    assert tls_files(load_node_config(None)) is None


def test_node_with_bad_tls_files_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "models").mkdir()
    f = tmp_path / "node.toml"
    f.write_text('[repository]\npath = "models"\n[server.tls]\ncert_file = "nope.pem"\nkey_file = "nope.key"\n')
    done = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "--config", str(f)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "server.tls.cert_file: cannot read" in done.stderr and "Traceback" not in done.stderr
