"""Malformed requests over HTTP and gRPC get a clear client error, and the server
keeps answering valid requests; plus property-based fuzzing of the decoders."""

from __future__ import annotations

import gzip
import logging
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from dlinfer.builtin.binary_codec import HEADER_LENGTH, decode, tensor_from_bytes
from dlinfer.config import node_config_from_dict
from dlinfer.errors import InvalidInput
from dlinfer.inference import InferenceRequest
from dlinfer.server.proto import inference_pb2
from dlinfer.server.v2_grpc import decode_infer_request
from dlinfer.testing import RunningNode, node_config, onnx_identity_model, onnx_linear_model, write_model

TOKEN = "control-token"
MAX_BODY = 256 * 1024
LIMITS = {
    "max_body_bytes": MAX_BODY,
    "max_batch_size": 8,
    "max_tensor_elements": 4096,
    "body_timeout_s": 0.5,
    "max_header_bytes": 16384,  # above aiohttp's 8190: the setting reaches the HTTP parser
}


def add_model() -> bytes:
    """``c = a + b`` over INT32: a model with two inputs."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.INT32, ["n", 2]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.INT32, ["n", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("bad") / "models"
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model()})
    write_model(root, "words", 1, {"model.onnx": onnx_identity_model("BYTES")})
    write_model(root, "flags", 1, {"model.onnx": onnx_identity_model("BOOL")})
    write_model(root, "add", 1, {"model.onnx": add_model()})
    config = node_config(root, limits=LIMITS, repository={"control_token": TOKEN})
    with RunningNode(config) as n:
        yield n


# ------------------------------------------------------------------- HTTP

X = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}


def j(doc: Any) -> bytes:
    return orjson.dumps(doc)


def infer_doc(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return j({"inputs": list(inputs), **extra})


def binary(header: dict[str, Any], tail: bytes, length: int | str | None = None) -> tuple[bytes, dict[str, str]]:
    head = j(header)
    return head + tail, {HEADER_LENGTH: str(len(head) if length is None else length)}


def bin_x(size: int = 16, **params: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": size, **params}}


F32 = np.arange(4, dtype=np.float32).tobytes()
LINEAR = "/v2/models/linear/infer"

# (case id, path, body, extra headers, expected HTTP status)
HTTP_CASES: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("garbage-bytes", LINEAR, b"\x00\xff\xfe garbage", {}, 400),
    ("empty-body", LINEAR, b"", {}, 400),
    ("truncated-json", LINEAR, infer_doc(X)[:-7], {}, 400),
    ("json-array", LINEAR, b"[1, 2, 3]", {}, 400),
    ("json-string", LINEAR, b'"inputs"', {}, 400),
    ("no-inputs", LINEAR, j({"id": "1"}), {}, 400),
    ("empty-inputs", LINEAR, j({"inputs": []}), {}, 400),
    ("inputs-not-list", LINEAR, j({"inputs": {"x": 1}}), {}, 400),
    ("input-not-object", LINEAR, j({"inputs": [5]}), {}, 400),
    ("input-missing-name", LINEAR, infer_doc({k: v for k, v in X.items() if k != "name"}), {}, 400),
    ("input-missing-datatype", LINEAR, infer_doc({k: v for k, v in X.items() if k != "datatype"}), {}, 400),
    ("input-missing-shape", LINEAR, infer_doc({k: v for k, v in X.items() if k != "shape"}), {}, 400),
    ("input-missing-data", LINEAR, infer_doc({k: v for k, v in X.items() if k != "data"}), {}, 400),
    ("unknown-datatype", LINEAR, infer_doc({**X, "datatype": "FP128"}), {}, 400),
    ("datatype-mismatch", LINEAR, infer_doc({**X, "datatype": "INT64"}), {}, 400),
    ("negative-shape", LINEAR, infer_doc({**X, "shape": [-1, 4]}), {}, 400),
    ("huge-shape", LINEAR, infer_doc({**X, "shape": [2**40, 2**40]}), {}, 400),
    ("empty-with-huge-dims", LINEAR, infer_doc({**X, "shape": [0, 2**40, 2**40], "data": []}), {}, 400),
    ("nan-in-shape", LINEAR, infer_doc(X).replace(b"[1,4]", b"[NaN,4]"), {}, 400),
    ("float-in-shape", LINEAR, infer_doc({**X, "shape": [1.5, 4]}), {}, 400),
    ("string-in-shape", LINEAR, infer_doc({**X, "shape": ["1", 4]}), {}, 400),
    ("bool-in-shape", LINEAR, infer_doc({**X, "shape": [True, 4]}), {}, 400),
    ("wrong-rank", LINEAR, infer_doc({**X, "shape": [4], "data": [1, 2, 3, 4]}), {}, 400),
    ("data-count-mismatch", LINEAR, infer_doc({**X, "data": [1, 2, 3]}), {}, 400),
    ("ragged-data", LINEAR, infer_doc({**X, "data": [[1, 2], [3]]}), {}, 400),
    ("strings-for-fp32", LINEAR, infer_doc({**X, "data": ["a", "b", "c", "d"]}), {}, 400),
    (
        "nan-literal-in-int-data",
        "/v2/models/add/infer",
        infer_doc(
            {"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
            {"name": "b", "datatype": "INT32", "shape": [1, 2], "data": [3, 4]},
        ).replace(b"[1,2]", b"[NaN,2]"),
        {},
        400,
    ),
    ("too-many-dims", LINEAR, infer_doc({**X, "shape": [1] * 65, "data": [1]}), {}, 400),
    ("binary-too-many-dims", LINEAR, *binary({"inputs": [{**bin_x(4), "shape": [1] * 65}]}, F32[:4]), 400),
    ("deeply-nested-data", LINEAR, infer_doc(X).replace(b"[1,2,3,4]", b"[" * 500 + b"1" + b"]" * 500), {}, 400),
    ("duplicate-input", LINEAR, infer_doc(X, X), {}, 400),
    ("unknown-input", LINEAR, infer_doc({**X, "name": "y"}), {}, 400),
    ("unicode-input-name", LINEAR, infer_doc({**X, "name": "\u5165\u529b"}), {}, 400),
    (
        "missing-input",
        "/v2/models/add/infer",
        infer_doc({"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]}),
        {},
        400,
    ),
    ("unknown-output", LINEAR, infer_doc(X, outputs=[{"name": "nope"}]), {}, 400),
    ("outputs-not-list", LINEAR, infer_doc(X, outputs=7), {}, 400),
    ("id-not-string", LINEAR, infer_doc(X, id=12), {}, 400),
    ("parameters-not-object", LINEAR, infer_doc(X, parameters=[1]), {}, 400),
    ("negative-timeout", LINEAR, infer_doc(X, parameters={"timeout": -5}), {}, 400),
    ("string-timeout", LINEAR, infer_doc(X, parameters={"timeout": "1s"}), {}, 400),
    ("batch-over-limit", LINEAR, infer_doc({**X, "shape": [9, 4], "data": [0.5] * 36}), {}, 400),
    ("elements-over-limit", LINEAR, infer_doc({**X, "shape": [1025, 4], "data": [0.5] * 4100}), {}, 400),
    (
        "int-out-of-range",
        "/v2/models/add/infer",
        infer_doc(
            {"name": "a", "datatype": "INT32", "shape": [1, 2], "data": [1, 2**40]},
            {"name": "b", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
        ),
        {},
        400,
    ),
    (
        "bytes-data-not-strings",
        "/v2/models/words/infer",
        infer_doc({"name": "x", "datatype": "BYTES", "shape": [1, 3], "data": [1, 2, 3]}),
        {},
        400,
    ),
    ("oversized-body", LINEAR, infer_doc({**X, "data": [0.123456789] * (MAX_BODY // 8)}), {}, 413),
    ("unsupported-content-type", LINEAR, infer_doc(X), {"Content-Type": "image/png"}, 400),
    ("plain-body-said-gzip", LINEAR, infer_doc(X), {"Content-Encoding": "gzip"}, 400),
    ("plain-body-said-deflate", LINEAR, infer_doc(X), {"Content-Encoding": "deflate"}, 400),
    ("gzip-body-said-deflate", LINEAR, gzip.compress(infer_doc(X)), {"Content-Encoding": "deflate"}, 400),
    ("truncated-gzip", LINEAR, gzip.compress(infer_doc(X))[:-12], {"Content-Encoding": "gzip"}, 400),
    ("unknown-content-encoding", LINEAR, infer_doc(X), {"Content-Encoding": "compress"}, 400),
    # Decompressed, the body is 4x the limit: refused before it is all in memory.
    ("gzip-bomb", LINEAR, gzip.compress(b" " * (4 * MAX_BODY) + infer_doc(X)), {"Content-Encoding": "gzip"}, 413),
    ("deflate-bomb", LINEAR, zlib.compress(b" " * (4 * MAX_BODY) + infer_doc(X)), {"Content-Encoding": "deflate"}, 413),
    ("unknown-model", "/v2/models/nope/infer", infer_doc(X), {}, 404),
    ("unknown-version", "/v2/models/linear/versions/7/infer", infer_doc(X), {}, 404),
    ("non-numeric-version", "/v2/models/linear/versions/latest/infer", infer_doc(X), {}, 404),
    ("unicode-model-name", "/v2/models/\u30e2\u30c7\u30eb/infer", infer_doc(X), {}, 404),
    ("path-escape-model-name", "/v2/models/..%2F..%2Fetc/infer", infer_doc(X), {}, 404),
    ("header-length-not-a-number", LINEAR, *binary({"inputs": [bin_x()]}, F32, "twelve"), 400),
    ("header-length-negative", LINEAR, *binary({"inputs": [bin_x()]}, F32, "-1"), 400),
    ("header-length-past-body", LINEAR, *binary({"inputs": [bin_x()]}, F32, 10**6), 400),
    ("header-length-cuts-json", LINEAR, *binary({"inputs": [bin_x()]}, F32, 20), 400),
    ("binary-truncated", LINEAR, *binary({"inputs": [bin_x()]}, F32[:10]), 400),
    ("binary-trailing-bytes", LINEAR, *binary({"inputs": [bin_x()]}, F32 + b"\x00" * 8), 400),
    ("binary-size-not-shape", LINEAR, *binary({"inputs": [bin_x(12)]}, F32[:12]), 400),
    ("binary-size-negative", LINEAR, *binary({"inputs": [bin_x(-16)]}, F32), 400),
    ("binary-size-string", LINEAR, *binary({"inputs": [bin_x("16")]}, F32), 400),
    (
        "binary-bytes-length-past-end",
        "/v2/models/words/infer",
        *binary(
            {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": 8}}]},
            struct.pack("<I", 100) + b"abcd",
        ),
        400,
    ),
    (
        "binary-bool-not-0-or-1",
        "/v2/models/flags/infer",
        *binary(
            {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1, 3], "parameters": {"binary_data_size": 3}}]},
            b"\x01\x00\x07",
        ),
        400,
    ),
]


def assert_serves(node: RunningNode) -> None:
    r = requests.post(node.url + LINEAR, data=infer_doc(X), timeout=10)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["logits", "probs"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"), [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES]
)
def test_http_malformed_request(
    node: RunningNode, path: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    r = requests.post(node.url + path, data=body, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and len(error) > 10
    assert_serves(node)


def test_http_unreadable_body_closes_the_connection(node: RunningNode, caplog: pytest.LogCaptureFixture) -> None:
    """A body that fails to decompress, or is refused with part of it unread, leaves bytes on
    the connection no later request could be parsed after: the answer says ``Connection: close``
    (so no client or gateway pools it), and the server logs no traceback for the client's mistake."""
    # 64 MB of spaces: more than aiohttp decompresses at once, so most of it is never read.
    bomb = gzip.compress(b" " * (64 << 20))
    with caplog.at_level(logging.ERROR):
        for body, status in ((infer_doc(X), 400), (bomb, 413)):
            with requests.Session() as session:
                r = session.post(node.url + LINEAR, data=body, headers={"Content-Encoding": "gzip"}, timeout=10)
                assert r.status_code == status, r.text
                assert "gzip" in r.json()["error"]
                assert r.headers.get("Connection", "").lower() == "close"
                assert session.post(node.url + LINEAR, data=infer_doc(X), timeout=10).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_http_case_count() -> None:
    assert len(HTTP_CASES) >= 40
    assert len({c[0] for c in HTTP_CASES}) == len(HTTP_CASES)


def test_http_oversized_headers(node: RunningNode) -> None:
    ok = requests.post(node.url + LINEAR, data=infer_doc(X), headers={"X-Padding": "a" * 12_000}, timeout=10)
    assert ok.status_code == 200, ok.text  # within limits.max_header_bytes
    r = requests.post(node.url + LINEAR, data=infer_doc(X), headers={"X-Padding": "a" * 20_000}, timeout=10)
    assert r.status_code == 400 and "16384" in r.text
    assert_serves(node)


def test_http_wrong_method_and_unknown_endpoint(node: RunningNode) -> None:
    assert requests.get(node.url + LINEAR, timeout=10).status_code == 405
    r = requests.post(node.url + "/v2/models/linear/explode", timeout=10)
    assert r.status_code == 404 and "no endpoint" in r.json()["error"]
    assert_serves(node)


def test_http_control_needs_token(node: RunningNode) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = requests.post(f"{node.url}/v2/repository/models/linear/unload", headers=headers, timeout=10)
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.post(f"{node.url}/v2/repository/models/nope/load", headers=auth, timeout=10)
    assert r.status_code == 404
    assert_serves(node)


def test_http_slow_loris_body_times_out(node: RunningNode) -> None:
    """A client that announces a body and then stalls is cut off with 408."""
    host, port = node.config.server.host, node.config.server.http_port
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            f"POST {LINEAR} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n".encode()
            + b'{"inputs": ['
        )
        t0 = time.monotonic()
        reply = s.recv(4096)
        assert time.monotonic() - t0 < 5
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert_serves(node)


# ------------------------------------------------------------------- gRPC


def grpc_request(model: str = "linear", **changes: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    for key, value in changes.items():
        value(request) if key == "edit" else setattr(request, key, value)
    return request


def _edit(fn: Any) -> Any:
    return grpc_request(edit=fn)


def _raw(request: Any, *chunks: bytes) -> None:
    for t in request.inputs:
        t.ClearField("contents")
    request.raw_input_contents.extend(chunks)


def _set_input(**fields: Any) -> Any:
    def edit(r: Any) -> None:
        t = r.inputs[0]
        for k, v in fields.items():
            if k == "shape":
                del t.shape[:]
                t.shape.extend(v)
            else:
                setattr(t, k, v)

    return edit


def _words(r: Any) -> None:
    r.model_name = "words"
    t = r.inputs[0]
    t.datatype = "BYTES"
    del t.shape[:]
    t.shape.extend([1, 1])
    t.ClearField("contents")
    r.raw_input_contents.append(struct.pack("<I", 50) + b"abc")


def _flags(r: Any) -> None:
    r.model_name = "flags"
    t = r.inputs[0]
    t.datatype = "BOOL"
    del t.shape[:]
    t.shape.extend([1, 2])
    t.ClearField("contents")
    r.raw_input_contents.append(b"\x01\x09")


def _add_one_input(r: Any) -> None:
    r.model_name = "add"
    t = r.inputs[0]
    t.name, t.datatype = "a", "INT32"
    del t.shape[:]
    t.shape.extend([1, 2])
    t.ClearField("contents")
    t.contents.int_contents.extend([1, 2])


def _int8_out_of_range(r: Any) -> None:
    t = r.inputs[0]
    t.datatype = "INT8"
    t.ClearField("contents")
    t.contents.int_contents.extend([1, 2, 300, 4])  # int_contents is 32-bit: the server must not wrap


def _fp64(r: Any) -> None:
    t = r.inputs[0]
    t.datatype = "FP64"
    t.ClearField("contents")
    t.contents.fp64_contents.extend([1, 2, 3, 4])


GRPC_CASES: list[tuple[str, Any, grpc.StatusCode]] = [
    ("unknown-model", grpc_request("nope"), grpc.StatusCode.NOT_FOUND),
    ("unknown-version", grpc_request(model_version="4"), grpc.StatusCode.NOT_FOUND),
    ("non-numeric-version", grpc_request(model_version="v1"), grpc.StatusCode.NOT_FOUND),
    ("unicode-model-name", grpc_request("\u30e2\u30c7\u30eb"), grpc.StatusCode.NOT_FOUND),
    ("path-escape-model-name", grpc_request("../../etc"), grpc.StatusCode.NOT_FOUND),
    ("no-inputs", _edit(lambda r: r.ClearField("inputs")), grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown-datatype", _edit(_set_input(datatype="FP128")), grpc.StatusCode.INVALID_ARGUMENT),
    ("datatype-mismatch", _edit(_fp64), grpc.StatusCode.INVALID_ARGUMENT),
    ("negative-shape", _edit(_set_input(shape=[-1, 4])), grpc.StatusCode.INVALID_ARGUMENT),
    ("huge-shape", _edit(_set_input(shape=[2**40, 2**20])), grpc.StatusCode.INVALID_ARGUMENT),
    (
        "empty-with-huge-dims",
        _edit(lambda r: _raw(r, b"") or _set_input(shape=[0, 2**40, 2**40])(r)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ("contents-count-mismatch", _edit(_set_input(shape=[2, 4])), grpc.StatusCode.INVALID_ARGUMENT),
    (
        "wrong-contents-field",
        _edit(lambda r: r.inputs[0].contents.ClearField("fp32_contents")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ("raw-and-contents", _edit(lambda r: r.raw_input_contents.append(F32)), grpc.StatusCode.INVALID_ARGUMENT),
    ("raw-count-mismatch", _edit(lambda r: _raw(r, F32, F32)), grpc.StatusCode.INVALID_ARGUMENT),
    ("raw-size-mismatch", _edit(lambda r: _raw(r, F32[:-1])), grpc.StatusCode.INVALID_ARGUMENT),
    ("fp16-in-contents", _edit(_set_input(datatype="FP16")), grpc.StatusCode.INVALID_ARGUMENT),
    ("raw-bytes-length-past-end", _edit(_words), grpc.StatusCode.INVALID_ARGUMENT),
    ("raw-bool-not-0-or-1", _edit(_flags), grpc.StatusCode.INVALID_ARGUMENT),
    ("int8-out-of-range", _edit(_int8_out_of_range), grpc.StatusCode.INVALID_ARGUMENT),
    ("duplicate-input", _edit(lambda r: r.inputs.append(r.inputs[0])), grpc.StatusCode.INVALID_ARGUMENT),
    ("missing-input", _edit(_add_one_input), grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown-input", _edit(_set_input(name="y")), grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown-output", _edit(lambda r: r.outputs.add(name="nope")), grpc.StatusCode.INVALID_ARGUMENT),
    (
        "negative-timeout",
        _edit(lambda r: r.parameters["timeout"].CopyFrom(service_pb2.InferParameter(int64_param=-3))),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "string-timeout",
        _edit(lambda r: r.parameters["timeout"].CopyFrom(service_pb2.InferParameter(string_param="1s"))),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "batch-over-limit",
        _edit(lambda r: (_set_input(shape=[9, 4])(r), r.inputs[0].contents.fp32_contents.extend([0.5] * 32))),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ("elements-over-limit", _edit(_set_input(shape=[2000, 4])), grpc.StatusCode.INVALID_ARGUMENT),
    ("too-many-dims", _edit(_set_input(shape=[1] * 65)), grpc.StatusCode.INVALID_ARGUMENT),
    (
        "raw-too-many-dims",
        _edit(lambda r: _raw(r, F32[:4]) or _set_input(shape=[1] * 65)(r)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
]


@pytest.fixture(scope="module")
def stub(node: RunningNode) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{node.config.server.grpc_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def assert_grpc_serves(stub: Any) -> None:
    response = stub.ModelInfer(grpc_request(), timeout=10)
    assert [o.name for o in response.outputs] == ["logits", "probs"]


@pytest.mark.parametrize(("request_msg", "code"), [c[1:] for c in GRPC_CASES], ids=[c[0] for c in GRPC_CASES])
def test_grpc_malformed_request(stub: Any, request_msg: Any, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request_msg, timeout=10)
    assert exc.value.code() == code, exc.value.details()
    assert len(exc.value.details()) > 10
    assert_grpc_serves(stub)


def test_grpc_case_count() -> None:
    assert len(GRPC_CASES) >= 20
    assert len(HTTP_CASES) + len(GRPC_CASES) >= 80


def test_grpc_garbage_message(node: RunningNode, stub: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{node.config.server.grpc_port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as exc:
            call(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in exc.value.details()
    assert_grpc_serves(stub)


def test_grpc_oversized_message(stub: Any) -> None:
    request = grpc_request(edit=lambda r: _raw(r, b"\x00" * (MAX_BODY + 1024)))
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request, timeout=10)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_grpc_serves(stub)


def test_grpc_control_needs_token(stub: Any) -> None:
    for metadata in ((), (("authorization", "Bearer nope"),)):
        with pytest.raises(grpc.RpcError) as exc:
            stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="linear"), metadata=metadata)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    auth = (("authorization", f"Bearer {TOKEN}"),)
    with pytest.raises(grpc.RpcError) as exc:
        stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="nope"), metadata=auth)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="\u00fcber"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert_grpc_serves(stub)


# --------------------------------------------------------------- fuzzing

# No example database: the run leaves no .hypothesis/ folder behind.
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG = node_config_from_dict({"limits": {"max_tensor_elements": 10_000}})
DATATYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "UINT64", "FP16", "FP32", "FP64", "BYTES", "FP8", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)
shapes = st.lists(st.integers(min_value=-2, max_value=2**40), max_size=4) | st.lists(
    st.integers(min_value=0, max_value=2), min_size=60, max_size=70
)
input_docs = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y", ""]), "datatype": st.sampled_from(DATATYPES), "shape": shapes},
    optional={
        "data": json_values,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(min_value=-4, max_value=64)}),
    },
)


def _accepted(request: InferenceRequest) -> None:
    for inp in request.inputs:
        assert isinstance(inp.data, np.ndarray) and inp.data.shape == inp.shape


@FUZZ
@given(body=st.binary(max_size=256), length=st.none() | st.integers(min_value=-3, max_value=300) | st.text(max_size=4))
def test_fuzz_binary_codec_with_arbitrary_bytes(body: bytes, length: Any) -> None:
    headers = {} if length is None else {HEADER_LENGTH: str(length)}
    try:
        _accepted(decode(body, headers))
    except InvalidInput:
        pass


@FUZZ
@given(inputs=st.lists(input_docs, max_size=3), tail=st.binary(max_size=64), extra=json_values)
def test_fuzz_binary_codec_with_structured_requests(inputs: list[dict[str, Any]], tail: bytes, extra: Any) -> None:
    header = orjson.dumps({"inputs": inputs, "outputs": extra, "id": "f"})
    try:
        _accepted(decode(header + tail, {HEADER_LENGTH: str(len(header))}))
    except InvalidInput:
        pass


@FUZZ
@given(datatype=st.sampled_from(DATATYPES), shape=shapes, buf=st.binary(max_size=128))
def test_fuzz_tensor_from_bytes(datatype: str, shape: list[int], buf: bytes) -> None:
    try:
        arr = tensor_from_bytes("x", datatype, shape, buf)
    except InvalidInput:
        return
    assert arr.shape == tuple(shape)


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_grpc_decoder_with_arbitrary_messages(data: bytes) -> None:
    from google.protobuf.message import DecodeError

    try:
        msg = inference_pb2.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    try:
        _accepted(decode_infer_request(msg, CONFIG))
    except InvalidInput:
        pass


@FUZZ
@given(
    tensors=st.lists(
        st.tuples(st.sampled_from(DATATYPES), shapes, st.binary(max_size=64), st.lists(st.integers(-300, 300))),
        min_size=1,
        max_size=3,
    ),
    raw=st.booleans(),
)
def test_fuzz_grpc_decoder_with_structured_requests(
    tensors: list[tuple[str, list[int], bytes, list[int]]], raw: bool
) -> None:
    msg = inference_pb2.ModelInferRequest(model_name="m")
    for i, (datatype, shape, buf, ints) in enumerate(tensors):
        t = msg.inputs.add(name=f"in{i}", datatype=datatype, shape=shape)
        if raw:
            msg.raw_input_contents.append(buf)
        else:
            t.contents.int_contents.extend(ints)
    try:
        _accepted(decode_infer_request(msg, CONFIG))
    except InvalidInput:
        pass
