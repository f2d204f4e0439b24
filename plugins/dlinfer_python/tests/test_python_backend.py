"""Triton Python-backend models (model.py with TritonPythonModel) on a real node, through tritonclient."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.api.testing import RunningNode, node_config, onnx_identity_model, write_model

ALLOW = {"plugins": {"python": {"allow_code": True}}}

ADD_SUB = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = args
        self.config = json.loads(args["model_config"])
        out0 = pb_utils.get_output_config_by_name(self.config, "OUTPUT0")
        self.dtype = pb_utils.triton_string_to_numpy(out0["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            # Echo what initialize() was told, so the test can check Triton's argument names.
            seen = json.dumps({k: self.args[k] for k in sorted(self.args) if k != "model_config"})
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtype)),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(self.dtype)),
                pb_utils.Tensor("ARGS", np.array([[seen.encode()]] * len(a), dtype=object)),
            ]))
        return responses
"""

UPPER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            text = r.inputs()[0].as_numpy()
            upper = np.array([s.decode().upper() for s in text.reshape(-1)], dtype=object).reshape(text.shape)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT_OUT", upper)]))
        return out
"""

RAISES = """
class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("the model refuses on purpose")
"""

TRITON_ERROR = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        code = pb_utils.TritonError.INVALID_ARG
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("INPUT0 must be positive", code))
                for _ in requests]
"""

BLS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X")
            target = "ident" if x.as_numpy()[0, 0] >= 0 else "no_such_model"
            call = pb_utils.InferenceRequest(
                model_name=target, inputs=[pb_utils.Tensor("x", x.as_numpy())], requested_output_names=["y"])
            response = call.exec()
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            y = pb_utils.get_output_tensor_by_name(response, "y").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y * 2)]))
        return out
"""

ASYNC_BLS = """
import asyncio
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            calls = [pb_utils.InferenceRequest(model_name="ident", inputs=[pb_utils.Tensor("x", x + k)],
                                               requested_output_names=["y"]).async_exec() for k in (1, 2)]
            first, second = await asyncio.gather(*calls)
            y = first.output_tensors()[0].as_numpy() + second.output_tensors()[0].as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return out
"""

RUNNING_SUM = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            start = pb_utils.get_input_tensor_by_name(r, "START").as_numpy().reshape(-1)
            corrid = pb_utils.get_input_tensor_by_name(r, "CORRID").as_numpy().reshape(-1)
            y = np.empty_like(x)
            for i, key in enumerate(corrid.tolist()):
                y[i] = (0 if start[i] else self.sums.get(key, 0)) + x[i]
                self.sums[key] = y[i]
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return out
"""

SEQUENCE_BLS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            flags = [pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START, pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END]
            for flag in flags:  # a two-request sequence on the stateful model: its sum is 2 * x
                response = pb_utils.InferenceRequest(
                    model_name="running", inputs=[pb_utils.Tensor("X", x)], requested_output_names=["Y"],
                    correlation_id=77, flags=flag).exec()
                if response.has_error():
                    raise pb_utils.TritonModelException(response.error().message())
            out.append(pb_utils.InferenceResponse(response.output_tensors()))
        return out
"""

FINALIZES = """
import pathlib
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marker = pathlib.Path(args["model_repository"]) / "finalized"

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", r.inputs()[0].as_numpy())]) for r in requests]

    def finalize(self):
        self.marker.write_text("yes")
"""


def _fp32(name: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": dims}


def _xy_config() -> dict[str, Any]:
    return {"max_batch_size": 4, "input": [_fp32("X", [3])], "output": [_fp32("Y", [3])]}


def _python_model(repo: Path, name: str, source: str, config: dict[str, Any]) -> None:
    write_model(repo, name, 1, {"model.py": textwrap.dedent(source).encode()}, config)


def _repository(repo: Path) -> None:
    _python_model(
        repo,
        "add_sub",
        ADD_SUB,
        {
            "max_batch_size": 8,
            "instance_count": 2,
            "input": [_fp32("INPUT0", [4]), _fp32("INPUT1", [4])],
            "output": [
                _fp32("OUTPUT0", [4]),
                _fp32("OUTPUT1", [4]),
                {"name": "ARGS", "datatype": "BYTES", "shape": [1]},
            ],
        },
    )
    _python_model(
        repo,
        "upper",
        UPPER,
        {
            "max_batch_size": 0,
            "input": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}],
            "output": [{"name": "TEXT_OUT", "datatype": "BYTES", "shape": [-1]}],
        },
    )
    _python_model(repo, "raises", RAISES, _xy_config())
    _python_model(repo, "triton_error", TRITON_ERROR, _xy_config())
    _python_model(repo, "bls", BLS, _xy_config())
    _python_model(repo, "async_bls", ASYNC_BLS, _xy_config())
    write_model(repo, "ident", 1, {"model.onnx": onnx_identity_model("FP32")})
    running = _xy_config()
    running["input"] += [
        {"name": "START", "datatype": "INT32", "shape": [1]},
        {"name": "CORRID", "datatype": "UINT64", "shape": [1]},
    ]
    running["sequence_batching"] = {
        "control_input": [
            {"name": "START", "kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]},
            {"name": "CORRID", "kind": "CONTROL_SEQUENCE_CORRID", "data_type": "UINT64"},
        ]
    }
    _python_model(repo, "running", RUNNING_SUM, running)
    _python_model(repo, "sequence_bls", SEQUENCE_BLS, _xy_config())


def _xy(client: Any, module: Any, model: str, x: np.ndarray) -> np.ndarray:
    inp = module.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("Y")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("python-models")
    _repository(repo)
    with RunningNode(node_config(repo, **ALLOW)) as n:
        yield n


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, node: RunningNode) -> tuple[Any, Any]:
    host = node.config.server.host
    if request.param == "http":
        return httpclient.InferenceServerClient(f"{host}:{node.config.server.http_port}"), httpclient
    return grpcclient.InferenceServerClient(f"{host}:{node.config.server.grpc_port}"), grpcclient


def test_add_sub_gets_tritons_initialize_arguments(client: tuple[Any, Any]) -> None:
    c, mod = client
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    inputs = [mod.InferInput("INPUT0", [2, 4], "FP32"), mod.InferInput("INPUT1", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = c.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    import json

    args = json.loads(result.as_numpy("ARGS")[0, 0])
    assert args["model_name"] == "add_sub"
    assert args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_name"] in {"add_sub_0_0", "add_sub_0_1"}
    assert Path(args["model_repository"]).name == "add_sub"
    metadata = c.get_model_metadata("add_sub")
    platform = metadata["platform"] if isinstance(metadata, dict) else metadata.platform
    assert platform == "python"


def test_bytes_in_and_out(client: tuple[Any, Any]) -> None:
    c, mod = client
    text = np.array([b"hello", b"triton"], dtype=object)
    inp = mod.InferInput("TEXT", [2], "BYTES")
    inp.set_data_from_numpy(text)
    assert c.infer("upper", [inp]).as_numpy("TEXT_OUT").tolist() == [b"HELLO", b"TRITON"]


def test_an_exception_in_execute_is_a_500_with_its_message(client: tuple[Any, Any]) -> None:
    c, mod = client
    with pytest.raises(InferenceServerException, match="the model refuses on purpose") as info:
        _xy(c, mod, "raises", np.zeros((1, 3), np.float32))
    assert info.value.status() in ("500", "StatusCode.INTERNAL")
    # The node keeps serving.
    np.testing.assert_array_equal(_xy(c, mod, "bls", np.ones((1, 3), np.float32)), np.full((1, 3), 2.0))


def test_a_triton_error_response_reaches_the_client(client: tuple[Any, Any]) -> None:
    c, mod = client
    with pytest.raises(InferenceServerException, match="INPUT0 must be positive") as info:
        _xy(c, mod, "triton_error", np.zeros((1, 3), np.float32))
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def test_bls_calls_an_onnx_model_of_the_same_node(client: tuple[Any, Any], node: RunningNode) -> None:
    c, mod = client
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    np.testing.assert_array_equal(_xy(c, mod, "bls", x), x * 2)
    # A BLS call to an unknown model comes back as an error response; the model re-raised it.
    with pytest.raises(InferenceServerException, match="unknown model 'no_such_model'"):
        _xy(c, mod, "bls", -x)


def test_bls_correlation_id_and_flags_reach_a_stateful_model(client: tuple[Any, Any]) -> None:
    """As in Triton, a BLS request's correlation_id and START/END flags are its sequence parameters."""
    c, mod = client
    x = np.array([[1, 2, 3]], dtype=np.float32)
    np.testing.assert_array_equal(_xy(c, mod, "sequence_bls", x), x * 2)


def test_async_bls_runs_calls_concurrently(client: tuple[Any, Any]) -> None:
    c, mod = client
    x = np.zeros((1, 3), dtype=np.float32)
    np.testing.assert_array_equal(_xy(c, mod, "async_bls", x), np.full((1, 3), 3.0))


def test_python_models_are_refused_without_the_opt_in(tmp_path: Path) -> None:
    _python_model(tmp_path, "add_sub", RAISES, _xy_config())
    with RunningNode(node_config(tmp_path)) as n:
        index = httpclient.InferenceServerClient(f"127.0.0.1:{n.config.server.http_port}").get_model_repository_index()
    (entry,) = index
    assert entry["state"] == "UNAVAILABLE"
    assert "allow_code = true under [plugins.python]" in entry["reason"]


def test_finalize_runs_when_the_model_unloads(tmp_path: Path) -> None:
    _python_model(tmp_path, "fin", FINALIZES, _xy_config())
    with RunningNode(node_config(tmp_path, **ALLOW)) as n:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{n.config.server.http_port}")
        np.testing.assert_array_equal(_xy(c, httpclient, "fin", np.ones((1, 3), np.float32)), np.ones((1, 3)))
        assert not (tmp_path / "fin" / "finalized").exists()
    assert (tmp_path / "fin" / "finalized").read_text() == "yes"


def test_a_model_py_without_triton_python_model_is_a_load_error(tmp_path: Path) -> None:
    _python_model(tmp_path, "empty", "x = 1\n", _xy_config())
    _python_model(tmp_path, "broken", "import no_such_module_here\n", _xy_config())
    with RunningNode(node_config(tmp_path, **ALLOW)) as n:
        index = httpclient.InferenceServerClient(f"127.0.0.1:{n.config.server.http_port}").get_model_repository_index()
    reasons = {e["name"]: e["reason"] for e in index}
    assert "defines no class TritonPythonModel" in reasons["empty"]
    assert "failed to import: ModuleNotFoundError" in reasons["broken"]


SCALES_BY_HELPER = """
import numpy as np
import triton_python_backend_utils as pb_utils

import helper


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x * helper.VALUE).astype(np.float32))]))
        return out
"""


def test_each_model_imports_its_own_helper_modules(tmp_path: Path) -> None:
    """Two models with a helper module of the same name each get their own (Triton runs each
    model in its own process; here the helpers must not be shared through sys.modules)."""
    for name, value in (("scale_a", 2), ("scale_b", 3)):
        files = {"model.py": textwrap.dedent(SCALES_BY_HELPER).encode(), "helper.py": f"VALUE = {value}\n".encode()}
        write_model(tmp_path, name, 1, files, _xy_config())
    with RunningNode(node_config(tmp_path, **ALLOW)) as n:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{n.config.server.http_port}")
        x = np.ones((1, 3), np.float32)
        np.testing.assert_array_equal(_xy(c, httpclient, "scale_a", x), 2 * x)
        np.testing.assert_array_equal(_xy(c, httpclient, "scale_b", x), 3 * x)
