"""The V2 binary tensor extension over HTTP: tritonclient (binary and JSON),
hand-built bodies, and the tensor <-> bytes functions against tritonclient's own."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from dlinfer.builtin.binary_codec import tensor_from_bytes, tensor_to_bytes
from dlinfer.errors import InvalidInput
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_identity_models, write_model

DATATYPES = ["FP32", "INT64", "BOOL", "BYTES", "FP16", "INT8", "UINT8", "FP64"]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    rng = np.random.default_rng(7)
    n = int(np.prod(shape))
    if datatype == "BYTES":
        words = [b"", b"a", "h\u00e9llo".encode(), b"\x00\x01", b"x" * 300, b"tensor"]
        return np.array([words[i % len(words)] for i in range(n)], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    dtype = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return rng.standard_normal(n).astype(dtype).reshape(shape)
    dtype = {"INT64": np.int64, "INT8": np.int8, "UINT8": np.uint8}[datatype]
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True).reshape(shape)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("binary") / "models"
    write_identity_models(root, DATATYPES)
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(root)) as n:
        yield n


@pytest.fixture(scope="module")
def client(node: RunningNode) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(node.url.removeprefix("http://"))


ROUND_TRIPS = [
    pytest.param(dt, bin_in, bin_out, id=f"{dt}-{'bin' if bin_in else 'json'}-in-{'bin' if bin_out else 'json'}-out")
    for dt in DATATYPES
    for bin_in in (True, False)
    for bin_out in (True, False)
    if bin_in or dt != "FP16"  # tritonclient sends FP16 only as binary; JSON FP16 is tested below
]


@pytest.mark.parametrize(("datatype", "binary_in", "binary_out"), ROUND_TRIPS)
def test_identity_round_trip(
    client: httpclient.InferenceServerClient, datatype: str, binary_in: bool, binary_out: bool
) -> None:
    arr = sample(datatype)
    inp = httpclient.InferInput("x", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary_in)
    result = client.infer(
        f"id_{datatype.lower()}",
        [inp],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary_out)],
        request_id="req-7",
    )
    out = result.as_numpy("y")
    assert result.get_response()["id"] == "req-7"
    if datatype == "BYTES" and not binary_out:
        # JSON carries text: tritonclient hands back str.
        expected = [b.decode() for b in arr.reshape(-1)]
        assert out.reshape(-1).tolist() == expected
    else:
        assert out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)


def test_fp16_as_json_numbers(node: RunningNode) -> None:
    arr = sample("FP16")
    body = {"inputs": [{"name": "x", "datatype": "FP16", "shape": [2, 3], "data": arr.reshape(-1).tolist()}]}
    doc = requests.post(f"{node.url}/v2/models/id_fp16/infer", json=body, timeout=10).json()
    np.testing.assert_array_equal(np.array(doc["outputs"][0]["data"], np.float16).reshape(2, 3), arr)


def test_linear_equals_onnxruntime_and_outputs_subset(client: httpclient.InferenceServerClient) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    session = ort.InferenceSession(onnx_linear_model(), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probs"], {"x": x})
    inp = httpclient.InferInput("x", [5, 4], "FP32")
    inp.set_data_from_numpy(x)
    # No outputs named: tritonclient asks for all of them in binary (binary_data_output).
    result = client.infer("linear", [inp])
    assert {o["name"] for o in result.get_response()["outputs"]} == {"logits", "probs"}
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    np.testing.assert_array_equal(result.as_numpy("probs"), probs)
    # One output requested: only it comes back.
    result = client.infer("linear", [inp], outputs=[httpclient.InferRequestedOutput("probs")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probs"]
    np.testing.assert_array_equal(result.as_numpy("probs"), probs)


def test_hand_built_binary_request_and_response(node: RunningNode) -> None:
    """The wire format itself, without tritonclient: header length, tail order, output sizes."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    header = orjson.dumps(
        {
            "id": "hand",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [
                {"name": "logits", "parameters": {"binary_data": True}},
                {"name": "probs", "parameters": {"binary_data": False}},
            ],
        }
    )
    r = requests.post(
        f"{node.url}/v2/models/linear/infer",
        data=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    doc = orjson.loads(r.content[:n])
    assert doc["id"] == "hand"
    logits_doc, probs_doc = doc["outputs"]
    assert logits_doc["parameters"]["binary_data_size"] == 2 * 3 * 4 and "data" not in logits_doc
    logits = np.frombuffer(r.content[n:], np.float32).reshape(2, 3)
    probs = np.array(probs_doc["data"], np.float32).reshape(2, 3)
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), rtol=1e-5)


def test_two_binary_inputs_share_the_tail(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.INT32, ["n", 2]),
            helper.make_tensor_value_info("b", TensorProto.INT32, ["n", 2]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.INT32, ["n", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    write_model(tmp_path, "add", 1, {"model.onnx": model.SerializeToString()})
    with RunningNode(node_config(tmp_path)) as node:
        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
        a = np.array([[1, 2], [3, 4]], np.int32)
        b = np.array([[10, 20], [30, 40]], np.int32)
        inputs = [httpclient.InferInput("a", [2, 2], "INT32"), httpclient.InferInput("b", [2, 2], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b, binary_data=False)  # one binary, one JSON
        np.testing.assert_array_equal(client.infer("add", inputs).as_numpy("c"), a + b)


def test_timeout_parameter_is_checked(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert client.infer("linear", [inp], timeout=5_000_000).as_numpy("probs").shape == (1, 3)
    with pytest.raises(InferenceServerException, match="timeout"):
        client.infer("linear", [inp], parameters={"timeout": "soon"})


@pytest.mark.parametrize("binary_out", [True, False], ids=["bin-out", "json-out"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_zero_rows(
    client: httpclient.InferenceServerClient, node: RunningNode, datatype: str, binary_out: bool
) -> None:
    """A batch of no rows is a valid request: an empty output of the right shape comes
    back as JSON, as binary and over gRPC."""
    arr = sample(datatype, (0, 3))
    inp = httpclient.InferInput("x", [0, 3], datatype)
    inp.set_data_from_numpy(arr, binary_data=True)
    out = httpclient.InferRequestedOutput("y", binary_data=binary_out)
    y = client.infer(f"id_{datatype.lower()}", [inp], outputs=[out]).as_numpy("y")
    assert y.shape == (0, 3)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    ginp = grpcclient.InferInput("x", [0, 3], datatype)
    ginp.set_data_from_numpy(arr)
    assert grpc.infer(f"id_{datatype.lower()}", [ginp]).as_numpy("y").shape == (0, 3)
    grpc.close()


@pytest.mark.parametrize("response_compression", [None, "gzip", "deflate"])
@pytest.mark.parametrize("request_compression", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_compressed_requests(
    client: httpclient.InferenceServerClient,
    binary: bool,
    request_compression: str,
    response_compression: str | None,
) -> None:
    """``Content-Encoding: gzip|deflate`` request bodies, JSON or binary tensors, as Triton takes them."""
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    inp = httpclient.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probs", binary_data=binary)]
    plain = client.infer("linear", [inp], outputs=outputs).as_numpy("probs")
    result = client.infer(
        "linear",
        [inp],
        outputs=outputs,
        request_compression_algorithm=request_compression,
        response_compression_algorithm=response_compression,
    )
    np.testing.assert_array_equal(result.as_numpy("probs"), plain)


def test_gzip_body_in_chunks(node: RunningNode) -> None:
    """A compressed body sent with chunked transfer encoding (no Content-Length)."""
    body = gzip.compress(
        orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]})
    )
    r = requests.post(
        f"{node.url}/v2/models/linear/infer",
        data=iter([body[:10], body[10:]]),
        headers={"Content-Encoding": "gzip"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [1, 3]


NON_FINITE = [np.nan, np.inf, -np.inf, 1.5, -0.0, 3e-8]


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_non_finite_outputs_in_json(client: httpclient.InferenceServerClient, node: RunningNode, datatype: str) -> None:
    """NaN and infinities in JSON outputs are written as ``NaN``, ``Infinity`` and
    ``-Infinity`` (as Triton does), never as a silent null; tritonclient reads them back."""
    arr = np.array(NON_FINITE, dtype=sample(datatype).dtype).reshape(2, 3)
    inp = httpclient.InferInput("x", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=True)
    out = httpclient.InferRequestedOutput("y", binary_data=False)
    y = client.infer(f"id_{datatype.lower()}", [inp], outputs=[out]).as_numpy("y")
    np.testing.assert_array_equal(y, arr)
    # The raw body, read by Python's json (what tritonclient and requests use).
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": datatype, "shape": [2, 3], "parameters": {"binary_data_size": arr.nbytes}}
            ]
        }
    )
    r = requests.post(
        f"{node.url}/v2/models/id_{datatype.lower()}/infer",
        data=header + arr.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=10,
    )
    assert r.status_code == 200 and b"null" not in r.content, r.text
    assert b"[NaN,Infinity,-Infinity," in r.content
    data = json.loads(r.content)["outputs"][0]["data"]
    np.testing.assert_array_equal(np.array(data, dtype=arr.dtype), arr.reshape(-1))


def test_non_finite_inputs_in_json(client: httpclient.InferenceServerClient, node: RunningNode) -> None:
    """JSON inputs may carry the same tokens: what the server writes, it reads."""
    arr = np.array(NON_FINITE, dtype=np.float32).reshape(2, 3)
    inp = httpclient.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(arr, binary_data=False)  # tritonclient writes NaN/Infinity with json.dumps
    out = httpclient.InferRequestedOutput("y", binary_data=True)
    np.testing.assert_array_equal(client.infer("id_fp32", [inp], outputs=[out]).as_numpy("y"), arr)
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 3], '
        b'"data": [[NaN, Infinity, -Infinity], [1, 2, 3]]}]}'
    )
    r = requests.post(f"{node.url}/v2/models/id_fp64/infer", data=body, timeout=10)
    assert r.status_code == 200, r.text
    assert json.loads(r.content)["outputs"][0]["data"][:3] == [
        pytest.approx(float("nan"), nan_ok=True),
        float("inf"),
        float("-inf"),
    ]


# ----------------------------------------------------------- tensor <-> bytes


@pytest.mark.parametrize("datatype", DATATYPES)
def test_bytes_layout_matches_tritonclient(datatype: str) -> None:
    arr = sample(datatype, (3, 2))
    ours = bytes(tensor_to_bytes(arr, datatype))
    if datatype == "BYTES":
        theirs = serialize_byte_tensor(arr).item()
    else:
        theirs = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    assert ours == theirs
    back = tensor_from_bytes("x", datatype, [3, 2], ours)
    assert back.shape == (3, 2)
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_empty_tensor_bytes(datatype: str) -> None:
    arr = sample(datatype, (0, 3))
    assert bytes(tensor_to_bytes(arr, datatype)) == b""
    assert tensor_from_bytes("x", datatype, [0, 3], b"").shape == (0, 3)


def test_fixed_size_decode_is_zero_copy() -> None:
    buf = np.arange(1024, dtype=np.float32).tobytes()
    arr = tensor_from_bytes("x", "FP32", [32, 32], buf)
    assert not arr.flags.owndata and arr.base is not None


@pytest.mark.parametrize(
    ("datatype", "shape", "buf", "message"),
    [
        ("FP32", [2], b"\x00" * 7, "needs 8 bytes, got 7"),
        ("INT64", [-1], b"", "non-negative integers"),
        ("BOOL", [2], b"\x01\x02", "0 or 1"),
        ("BYTES", [2], struct.pack("<I", 1) + b"a\x00\x00\x00", "ends after 1 of 2"),
        ("BYTES", [1], struct.pack("<I", 9) + b"a", "claims 9 bytes"),
        ("BYTES", [1], struct.pack("<I", 1) + b"ab", "follow the last"),
        ("BYTES", [10**9], b"", "at least"),
        ("FP8", [1], b"\x00", "unsupported datatype"),
    ],
)
def test_malformed_bytes_are_refused(datatype: str, shape: list[int], buf: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        tensor_from_bytes("x", datatype, shape, buf)
