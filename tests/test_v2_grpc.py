"""The V2 gRPC service against the real tritonclient (and its generated stubs for
typed ``contents``), results compared with ONNX Runtime in-process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from dlinfer import hookimpl
from dlinfer.plugins import Plugins
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_identity_models, write_model

DATATYPES = ["FP32", "INT64", "BOOL", "BYTES", "FP16", "INT8", "UINT16", "FP64"]
TOKEN = "s3cret-token"


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    rng = np.random.default_rng(3)
    n = int(np.prod(shape))
    if datatype == "BYTES":
        words = [b"", b"a", "\u00fcber".encode(), b"x" * 100]
        return np.array([words[i % len(words)] for i in range(n)], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    if datatype.startswith("FP"):
        dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[datatype]
        return rng.standard_normal(n).astype(dtype).reshape(shape)
    dtype = {"INT64": np.int64, "INT8": np.int8, "UINT16": np.uint16}[datatype]
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True).reshape(shape)


class EchoService:
    """A second gRPC service added through the same hook, as the TF-Serving frontend does."""

    @hookimpl
    def dlinfer_grpc_services(self, server: Any, repository: Any) -> None:
        async def echo(request: bytes, context: Any) -> bytes:
            return request

        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler}),))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("grpc") / "models"
    write_identity_models(root, DATATYPES)
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model()})
    batching = {"instance_count": 2, "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_us": 500}}
    write_model(root, "batched", 1, {"model.onnx": onnx_linear_model()}, config={**batching, "max_batch_size": 8})
    config = node_config(root, repository={"control_token": TOKEN})
    plugins = Plugins(config).load()
    plugins.register(EchoService(), "echo")
    with RunningNode(config, plugins) as n:
        yield n


@pytest.fixture(scope="module")
def client(node: RunningNode) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    yield c
    c.close()


def test_health_and_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "dlinfer" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_ready(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("linear", as_json=True)
    assert meta["name"] == "linear" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probs"]
    assert client.is_model_ready("linear")
    assert client.is_model_ready("linear", "1")
    # Triton answers "not ready" for a model it does not have, rather than an error.
    assert not client.is_model_ready("nosuch")
    assert not client.is_model_ready("linear", "7")
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("missing")
    assert exc.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("datatype", DATATYPES)
def test_identity_raw_contents(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    arr = sample(datatype)
    inp = grpcclient.InferInput("x", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)  # tritonclient sends raw_input_contents
    result = client.infer(f"id_{datatype.lower()}", [inp], request_id="g-1")
    assert result.get_response().id == "g-1"
    out = result.as_numpy("y")
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


CONTENTS = {
    "FP32": "fp32_contents",
    "INT64": "int64_contents",
    "BOOL": "bool_contents",
    "BYTES": "bytes_contents",
    "INT8": "int_contents",
    "UINT16": "uint_contents",
    "FP64": "fp64_contents",
}


@pytest.mark.parametrize("datatype", sorted(CONTENTS))
def test_identity_typed_contents(node: RunningNode, datatype: str) -> None:
    """Typed ``contents`` (no raw bytes), sent with tritonclient's own generated stub."""
    arr = sample(datatype)
    request = service_pb2.ModelInferRequest(model_name=f"id_{datatype.lower()}", id="typed")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(arr.shape))
    getattr(tensor.contents, CONTENTS[datatype]).extend(arr.reshape(-1).tolist())
    request.outputs.add(name="y")
    with grpc.insecure_channel(f"127.0.0.1:{node.config.server.grpc_port}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert response.id == "typed" and response.outputs[0].datatype == datatype
    result = grpcclient.InferResult(response)
    np.testing.assert_array_equal(result.as_numpy("y"), arr)


def test_linear_equals_onnxruntime(client: grpcclient.InferenceServerClient) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(2).standard_normal((6, 4)).astype(np.float32)
    logits, probs = ort.InferenceSession(onnx_linear_model(), providers=["CPUExecutionProvider"]).run(
        ["logits", "probs"], {"x": x}
    )
    inp = grpcclient.InferInput("x", [6, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("linear", [inp])
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    np.testing.assert_array_equal(result.as_numpy("probs"), probs)
    only = client.infer("linear", [inp], outputs=[grpcclient.InferRequestedOutput("probs")])
    assert [o.name for o in only.get_response().outputs] == ["probs"]
    np.testing.assert_array_equal(only.as_numpy("probs"), probs)


def test_deadline_and_timeout_parameter(node: RunningNode, client: grpcclient.InferenceServerClient) -> None:
    inp = grpcclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert client.infer("linear", [inp], client_timeout=10, timeout=5_000_000).as_numpy("probs").shape == (1, 3)
    request = service_pb2.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    request.parameters["timeout"].int64_param = -1
    with grpc.insecure_channel(f"127.0.0.1:{node.config.server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as exc:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "timeout" in exc.value.details()


def test_repository_index_and_load_unload_round_trip(client: grpcclient.InferenceServerClient) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["linear"]["state"] == "READY" and index["linear"]["version"] == "1"
    auth = {"authorization": f"Bearer {TOKEN}"}
    client.unload_model("linear", headers=auth)
    assert not client.is_model_ready("linear")
    ready = client.get_model_repository_index(as_json=True, headers=None)
    assert "linear" not in {m["name"] for m in ready["models"] if m.get("state") == "READY"}
    inp = grpcclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as exc:
        client.infer("linear", [inp])
    assert exc.value.status() == "StatusCode.UNAVAILABLE"
    client.load_model("linear", headers=auth)
    assert client.is_model_ready("linear")
    assert client.infer("linear", [inp]).as_numpy("probs").shape == (1, 3)


def test_control_needs_the_token(client: grpcclient.InferenceServerClient) -> None:
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        with pytest.raises(InferenceServerException) as exc:
            client.unload_model("linear", headers=headers)
        assert exc.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.is_model_ready("linear")


def test_bad_load_parameters_are_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("linear", headers={"authorization": f"Bearer {TOKEN}"}, config="{not json")
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "not a valid Triton model configuration" in exc.value.message()
    with pytest.raises(InferenceServerException, match="control token"):
        client.load_model("linear", config="{}")  # the token is checked before the parameters


def test_another_service_shares_the_server(node: RunningNode, client: grpcclient.InferenceServerClient) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{node.config.server.grpc_port}") as channel:
        echo = channel.unary_unary("/test.Echo/Echo")
        assert echo(b"ping", timeout=10) == b"ping"
    assert client.is_server_live()


def test_model_config(client: grpcclient.InferenceServerClient) -> None:
    cfg = client.get_model_config("batched", as_json=True)["config"]
    assert cfg["name"] == "batched" and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == 8 and cfg["version_policy"] == {"latest": {"num_versions": 1}}
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}]  # no batch dimension
    assert [o["name"] for o in cfg["output"]] == ["logits", "probs"]
    assert cfg["instance_group"] == [{"name": "batched", "count": 2, "kind": "KIND_CPU"}]
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": "500"}
    plain = client.get_model_config("id_bytes", as_json=True)["config"]
    assert plain["input"][0]["data_type"] == "TYPE_STRING" and "dynamic_batching" not in plain
    with pytest.raises(InferenceServerException, match="nope"):
        client.get_model_config("nope")
