"""Inference responses compressed on ``Accept-Encoding`` (gzip, deflate), as Triton does:
tritonclient's ``response_compression_algorithm``, raw HTTP, through a gateway, and off."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import tritonclient.http as httpclient

from dlinfer.api.testing import RunningNode, node_config, onnx_identity_model, wait_for, write_model
from dlinfer.server.content_encoding import accepted_coding

X = np.arange(4096, dtype=np.float32).reshape(1, 4096)  # 16 KiB out: worth compressing
DOC = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4096], "data": X.ravel().tolist()}]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compress")
    write_model(root, "identity", 1, {"model.onnx": onnx_identity_model("FP32", ["batch", "n"])})
    return root


@pytest.fixture(scope="module")
def node(repo: Path) -> Iterator[RunningNode]:
    with RunningNode(node_config(repo)) as n:
        yield n


def _raw(url: str, accept: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body as sent (``raw.read`` with ``decode_content`` off: not decompressed)."""
    r = requests.post(f"{url}/v2/models/identity/infer", json=DOC, headers={"Accept-Encoding": accept}, stream=True)
    body = r.raw.read(decode_content=False)
    return r.status_code, dict(r.headers), body


@pytest.mark.parametrize(
    ("accept", "coding"), [("gzip", "gzip"), ("deflate", "deflate"), ("br, deflate;q=0.5", "deflate")]
)
def test_compressed_when_asked(node: RunningNode, accept: str, coding: str) -> None:
    status, headers, body = _raw(node.url, accept)
    assert status == 200 and headers["Content-Encoding"] == coding
    plain = gzip.decompress(body) if coding == "gzip" else zlib.decompress(body)
    assert len(body) < len(plain)
    assert orjson.loads(plain)["outputs"][0]["data"][:3] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("accept", ["identity", "gzip;q=0", "br"])
def test_sent_as_is_otherwise(node: RunningNode, accept: str) -> None:
    status, headers, body = _raw(node.url, accept)
    assert status == 200 and "Content-Encoding" not in headers
    assert orjson.loads(body)["outputs"][0]["data"][:3] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_response_compression(node: RunningNode, algorithm: str) -> None:
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    inp = httpclient.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=True)
    out = httpclient.InferRequestedOutput("y", binary_data=True)
    result = client.infer("identity", [inp], outputs=[out], response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("y"), X)
    client.close()


def test_off_by_setting(repo: Path) -> None:
    with RunningNode(node_config(repo, server={"compress_responses": False})) as n:
        assert "Content-Encoding" not in _raw(n.url, "gzip")[1]


def test_through_a_gateway(node: RunningNode, gateway_config: Callable[[list[str]], Any]) -> None:
    """The gateway forwards Accept-Encoding and passes the node's compressed body through."""
    with RunningNode(gateway_config([node.url])) as gw:
        wait_for(lambda: requests.get(f"{gw.url}/v2/models/identity/ready").ok, "the gateway to see the model")
        status, headers, body = _raw(gw.url, "gzip")
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        assert orjson.loads(gzip.decompress(body))["outputs"][0]["shape"] == [1, 4096]


def test_small_bodies_are_not_compressed(node: RunningNode) -> None:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    r = requests.post(f"{node.url}/v2/models/identity/infer", json=doc, headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in r.headers


def test_accept_encoding_parsing() -> None:
    assert accepted_coding("gzip, deflate") == "gzip"
    assert accepted_coding("deflate, gzip;q=0") == "deflate"
    assert accepted_coding("*") == "gzip"
    assert accepted_coding("*, gzip;q=0") == "deflate"
    assert accepted_coding("identity") is None
    assert accepted_coding("gzip;q=bad") is None
