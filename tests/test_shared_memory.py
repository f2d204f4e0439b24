"""The system shared memory extension against a real node, with tritonclient's own
shared memory helpers over HTTP and gRPC."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from dlinfer.api.testing import (
    RunningNode,
    node_config,
    onnx_identity_model,
    onnx_linear_model,
    write_model,
)

MAX_REGIONS = 6


def add_model() -> bytes:
    """``c = a + b`` over FP32: two inputs, so one can come from shared memory and one inline."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("shm") / "models"
    write_model(root, "id_fp32", 1, {"model.onnx": onnx_identity_model("FP32")})
    write_model(root, "id_bytes", 1, {"model.onnx": onnx_identity_model("BYTES")})
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model(seed=1)})
    write_model(root, "add", 1, {"model.onnx": add_model()})
    return root


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    cfg = node_config(
        _models(tmp_path_factory), server={"shared_memory": True}, limits={"max_shared_memory_regions": MAX_REGIONS}
    )
    with RunningNode(cfg) as n:
        yield n


@pytest.fixture(scope="module")
def node_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with RunningNode(node_config(_models(tmp_path_factory))) as n:
        yield n


def _http(n: RunningNode) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(n.url.removeprefix("http://"))


def _grpc(n: RunningNode) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{n.config.server.grpc_port}")


@pytest.fixture(params=["http", "grpc"])
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(node: RunningNode, protocol: str) -> Iterator[Any]:
    c = _http(node) if protocol == "http" else _grpc(node)
    yield c
    c.unregister_system_shared_memory()  # every region: each test starts with none
    c.close()


@pytest.fixture
def regions() -> Iterator[Any]:
    """Creates POSIX shared memory objects with tritonclient's helper and destroys them after the test."""
    made: list[Any] = []

    def create(name: str, byte_size: int) -> Any:
        handle = shm.create_shared_memory_region(name, f"/dlinfer_test_{os.getpid()}_{name}", byte_size)
        made.append(handle)
        return handle

    yield create
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _key(name: str) -> str:
    return f"/dlinfer_test_{os.getpid()}_{name}"


def _lib(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def _status(client: Any, protocol: str, name: str = "") -> dict[str, dict[str, Any]]:
    """Region status by name, in one shape for both protocols."""
    if protocol == "http":
        return {r["name"]: r for r in client.get_system_shared_memory_status(name)}
    doc = client.get_system_shared_memory_status(name, as_json=True)
    return {
        n: {"name": r["name"], "key": r["key"], "offset": int(r.get("offset", 0)), "byte_size": int(r["byte_size"])}
        for n, r in doc.get("regions", {}).items()
    }


def test_inputs_and_outputs_in_shared_memory(client: Any, protocol: str, regions: Any) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5
    inp, out = regions("in", x.nbytes), regions("out", x.nbytes)
    shm.set_shared_memory_region(inp, [x])
    client.register_system_shared_memory("in", _key("in"), x.nbytes)
    client.register_system_shared_memory("out", _key("out"), x.nbytes)
    lib = _lib(protocol)
    i = lib.InferInput("x", list(x.shape), "FP32")
    i.set_shared_memory("in", x.nbytes)
    o = lib.InferRequestedOutput("y")
    o.set_shared_memory("out", x.nbytes)

    result = client.infer("id_fp32", [i], outputs=[o])

    if protocol == "http":
        meta = result.get_output("y")
        assert meta["shape"] == [4, 3] and meta["datatype"] == "FP32" and "data" not in meta
    else:
        msg = result.get_output("y")
        assert list(msg.shape) == [4, 3] and msg.datatype == "FP32" and not msg.HasField("contents")
        assert result.get_response().raw_output_contents == [b""]  # no bytes on the wire
        meta = {"parameters": {k: v.string_param or v.int64_param for k, v in msg.parameters.items()}}
    assert meta["parameters"] == {"shared_memory_region": "out", "shared_memory_byte_size": x.nbytes}
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out, np.float32, [4, 3]), x)


def test_offsets_within_a_region(client: Any, protocol: str, regions: Any) -> None:
    """Input and output share one region at different offsets; the region itself starts at an offset."""
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    handle = regions("both", 4096 + 2 * x.nbytes)
    shm.set_shared_memory_region(handle, [x], offset=4096)
    client.register_system_shared_memory("both", _key("both"), 2 * x.nbytes, offset=4096)
    lib = _lib(protocol)
    i = lib.InferInput("x", [2, 3], "FP32")
    i.set_shared_memory("both", x.nbytes)
    o = lib.InferRequestedOutput("y")
    o.set_shared_memory("both", x.nbytes, offset=x.nbytes)
    client.infer("id_fp32", [i], outputs=[o])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [2, 3], offset=4096 + x.nbytes), x)


def test_bytes_tensors(client: Any, protocol: str, regions: Any) -> None:
    words = np.array([b"alpha", b"", "\u00fcber".encode(), b"z" * 40, b"q", b"r"], dtype=object).reshape(2, 3)
    serialized = serialize_byte_tensor(words)
    size = serialized_byte_size(serialized)
    inp, out = regions("words_in", size), regions("words_out", size)
    shm.set_shared_memory_region(inp, [serialized])
    client.register_system_shared_memory("words_in", _key("words_in"), size)
    client.register_system_shared_memory("words_out", _key("words_out"), size)
    lib = _lib(protocol)
    i = lib.InferInput("x", [2, 3], "BYTES")
    i.set_shared_memory("words_in", size)
    o = lib.InferRequestedOutput("y")
    o.set_shared_memory("words_out", size)
    client.infer("id_bytes", [i], outputs=[o])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out, np.object_, [2, 3]), words)


def test_mixed_inputs_and_outputs(client: Any, protocol: str, regions: Any) -> None:
    """One input from shared memory and one inline; one output to shared memory and one returned."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 5, 3)).astype(np.float32)
    handle = regions("a", a.nbytes)
    shm.set_shared_memory_region(handle, [a])
    client.register_system_shared_memory("a", _key("a"), a.nbytes)
    lib = _lib(protocol)
    ia, ib = lib.InferInput("a", [5, 3], "FP32"), lib.InferInput("b", [5, 3], "FP32")
    ia.set_shared_memory("a", a.nbytes)
    ib.set_data_from_numpy(b)
    np.testing.assert_allclose(client.infer("add", [ia, ib]).as_numpy("c"), a + b)

    # linear: logits and probs; probs (listed first) to shared memory, logits in the response.
    x = rng.standard_normal((2, 4)).astype(np.float32)
    out = regions("probs", 2 * 3 * 4)
    client.register_system_shared_memory("probs", _key("probs"), 2 * 3 * 4)
    ix = lib.InferInput("x", [2, 4], "FP32")
    ix.set_data_from_numpy(x)
    probs, logits = lib.InferRequestedOutput("probs"), lib.InferRequestedOutput("logits")
    probs.set_shared_memory("probs", 2 * 3 * 4)
    result = client.infer("linear", [ix], outputs=[probs, logits])
    expected = client.infer("linear", [ix]).as_numpy("probs")
    assert result.as_numpy("logits").shape == (2, 3)
    np.testing.assert_allclose(result.as_numpy("logits"), client.infer("linear", [ix]).as_numpy("logits"))
    np.testing.assert_allclose(shm.get_contents_as_numpy(out, np.float32, [2, 3]), expected)


def test_status_and_unregister(client: Any, protocol: str, regions: Any) -> None:
    regions("s1", 64)
    regions("s2", 8192)
    client.register_system_shared_memory("s1", _key("s1"), 64)
    client.register_system_shared_memory("s2", _key("s2"), 100, offset=4100)
    assert _status(client, protocol) == {
        "s1": {"name": "s1", "key": _key("s1"), "offset": 0, "byte_size": 64},
        "s2": {"name": "s2", "key": _key("s2"), "offset": 4100, "byte_size": 100},
    }
    assert list(_status(client, protocol, "s2")) == ["s2"]
    client.unregister_system_shared_memory("s1")
    assert list(_status(client, protocol)) == ["s2"]
    client.unregister_system_shared_memory("never-registered")  # no error, as in Triton
    client.unregister_system_shared_memory()
    assert _status(client, protocol) == {}
    with pytest.raises(InferenceServerException, match="'s1' is not registered"):
        client.get_system_shared_memory_status("s1")


def test_registration_errors(client: Any, protocol: str, regions: Any) -> None:
    regions("r", 256)
    client.register_system_shared_memory("r", _key("r"), 256)
    with pytest.raises(InferenceServerException, match="'r' is already registered"):
        client.register_system_shared_memory("r", _key("r"), 16)
    with pytest.raises(InferenceServerException, match=r"'far'.*offset 200 \+ byte_size 100 is beyond the end.*256"):
        client.register_system_shared_memory("far", _key("r"), 100, offset=200)
    with pytest.raises(InferenceServerException, match="'ghost': no shared memory object with key"):
        client.register_system_shared_memory("ghost", "/dlinfer_test_no_such_object", 16)
    with pytest.raises(InferenceServerException, match=r"'escape'.*not a shared memory object name"):
        client.register_system_shared_memory("escape", "/../etc/passwd", 16)
    for k in range(MAX_REGIONS - 1):
        client.register_system_shared_memory(f"r{k}", _key("r"), 16)
    with pytest.raises(InferenceServerException, match=r"'one-more'.*limits.max_shared_memory_regions"):
        client.register_system_shared_memory("one-more", _key("r"), 16)
    assert len(_status(client, protocol)) == MAX_REGIONS


def test_inference_errors_name_the_region(client: Any, protocol: str, regions: Any) -> None:
    x = np.ones((2, 3), np.float32)
    handle = regions("e", 64)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("e", _key("e"), 64)
    lib = _lib(protocol)

    def infer(in_region: str, in_size: int, in_offset: int = 0, out: tuple[str, int] | None = None) -> Any:
        i = lib.InferInput("x", [2, 3], "FP32")
        i.set_shared_memory(in_region, in_size, offset=in_offset)
        outputs = None
        if out:
            o = lib.InferRequestedOutput("y")
            o.set_shared_memory(*out)
            outputs = [o]
        return client.infer("id_fp32", [i], outputs=outputs)

    with pytest.raises(InferenceServerException, match="input 'x': shared memory region 'nope' is not registered"):
        infer("nope", 24)
    with pytest.raises(InferenceServerException, match=r"needs 24 bytes, but shared_memory_byte_size is 20.*'e'"):
        infer("e", 20)
    with pytest.raises(InferenceServerException, match=r"offset 48 \+ shared_memory_byte_size 24 is beyond.*64.*'e'"):
        infer("e", 24, in_offset=48)
    with pytest.raises(InferenceServerException, match=r"output 'y': 24 bytes do not fit.*16 bytes.*region 'e'"):
        infer("e", 24, out=("e", 16, 32))
    with pytest.raises(InferenceServerException, match="output 'y': shared memory region 'gone' is not registered"):
        infer("e", 24, out=("gone", 24))
    # the node still serves, from shared memory and inline
    i = lib.InferInput("x", [2, 3], "FP32")
    i.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("id_fp32", [i]).as_numpy("y"), x)
    infer("e", 24, out=("e", 24, 24))
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [2, 3], offset=24), x)


def test_requests_count_in_statistics(node: RunningNode, regions: Any) -> None:
    """Requests with shared memory go through the data plane: they are counted like any other."""
    client = _http(node)
    before = client.get_inference_statistics("id_fp32")["model_stats"][0]["inference_stats"]["success"]["count"]
    x = np.ones((1, 3), np.float32)
    handle = regions("c", x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("c", _key("c"), x.nbytes)
    i = httpclient.InferInput("x", [1, 3], "FP32")
    i.set_shared_memory("c", x.nbytes)
    client.infer("id_fp32", [i])
    client.unregister_system_shared_memory()
    after = client.get_inference_statistics("id_fp32")["model_stats"][0]["inference_stats"]["success"]["count"]
    assert after == before + 1


def test_extension_announced(node: RunningNode, node_off: RunningNode) -> None:
    assert "system_shared_memory" in _http(node).get_server_metadata()["extensions"]
    assert "system_shared_memory" in _grpc(node).get_server_metadata().extensions
    assert "system_shared_memory" not in _http(node_off).get_server_metadata()["extensions"]
    assert "system_shared_memory" not in _grpc(node_off).get_server_metadata().extensions


def test_extension_off_refuses_clearly(node_off: RunningNode, protocol: str, regions: Any) -> None:
    client = _http(node_off) if protocol == "http" else _grpc(node_off)
    regions("off", 64)
    disabled = r"system shared memory is disabled on this server \(server.shared_memory = false\)"
    with pytest.raises(InferenceServerException, match=disabled):
        client.register_system_shared_memory("off", _key("off"), 64)
    with pytest.raises(InferenceServerException, match=disabled):
        client.get_system_shared_memory_status()
    lib = _lib(protocol)
    i = lib.InferInput("x", [2, 3], "FP32")
    i.set_shared_memory("off", 24)
    with pytest.raises(InferenceServerException, match=disabled):
        client.infer("id_fp32", [i])
    x = np.ones((2, 3), np.float32)
    i.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("id_fp32", [i]).as_numpy("y"), x)


def test_cuda_shared_memory_is_refused(node: RunningNode) -> None:
    for method, path in [
        ("GET", "/v2/cudasharedmemory/status"),
        ("POST", "/v2/cudasharedmemory/region/g/register"),
        ("POST", "/v2/cudasharedmemory/unregister"),
    ]:
        r = requests.request(method, node.url + path, json={"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 4})
        assert r.status_code == 400
        assert "CUDA shared memory is not supported on this server" in r.json()["error"]
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported") as info:
        _grpc(node).get_cuda_shared_memory_status()
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"


def test_json_request_with_shared_memory(node: RunningNode, regions: Any) -> None:
    """A plain JSON body (no binary extension) naming regions, as curl would send it."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    handle = regions("j", 2 * x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    body = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 3],
                "parameters": {"shared_memory_region": "j", "shared_memory_byte_size": x.nbytes},
            }
        ],
        "outputs": [
            {
                "name": "y",
                "parameters": {
                    "shared_memory_region": "j",
                    "shared_memory_byte_size": x.nbytes,
                    "shared_memory_offset": x.nbytes,
                },
            }
        ],
    }
    url = node.url + "/v2/systemsharedmemory"
    assert requests.post(f"{url}/region/j/register", json={"key": _key("j"), "byte_size": 2 * x.nbytes}).ok
    try:
        r = requests.post(node.url + "/v2/models/id_fp32/infer", json=body)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        assert "data" not in out
        assert out["parameters"]["shared_memory_region"] == "j"
        assert out["parameters"]["shared_memory_byte_size"] == x.nbytes
        np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [2, 3], offset=x.nbytes), x)
        body["inputs"][0]["data"] = x.ravel().tolist()
        r = requests.post(node.url + "/v2/models/id_fp32/infer", json=body)
        assert r.status_code == 400 and "not both" in r.json()["error"]
        r = requests.post(f"{url}/region/k/register", json={"key": _key("j"), "byte_size": "many"})
        assert r.status_code == 400 and "'byte_size' must be a non-negative integer" in r.json()["error"]
    finally:
        requests.post(f"{url}/unregister")


def test_a_shrunk_object_is_refused_not_a_crash(client: Any, protocol: str, regions: Any) -> None:
    """A client that makes a registered object smaller gets a clear error for requests on it; the
    server does not touch pages past the object's end (which would kill it with SIGBUS)."""
    x = np.ones((64, 64), np.float32)
    regions("shrinks", x.nbytes)
    client.register_system_shared_memory("shrinks", _key("shrinks"), x.nbytes)
    os.truncate(f"/dev/shm/{_key('shrinks').lstrip('/')}", 16)
    lib = _lib(protocol)
    i = lib.InferInput("x", list(x.shape), "FP32")
    i.set_shared_memory("shrinks", x.nbytes)
    with pytest.raises(InferenceServerException, match="smaller than the region"):
        client.infer("id_fp32", [i])
    assert client.is_server_live()
    client.unregister_system_shared_memory("shrinks")
