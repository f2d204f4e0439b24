"""Ensembles (format = "ensemble"): pipelines of served models wired by tensor names, on a real node."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.api.testing import (
    RunningNode,
    metric_value,
    node_config,
    onnx_identity_model,
    onnx_linear_model,
    write_model,
)

DOUBLE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", r.inputs()[0].as_numpy() * 2)]) for r in requests]
"""


def _fp32(name: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": dims}


def _ensemble(steps: list[dict[str, Any]], inputs: list[str] = ["IN"], outputs: list[str] = ["OUT"]) -> dict:  # noqa: B006
    return {
        "format": "ensemble",
        "max_batch_size": 8,
        "input": [_fp32(n, [4]) for n in inputs],
        "output": [_fp32(n, [3]) for n in outputs],
        "ensemble": {"step": steps},
    }


def _linear_then_identity() -> list[dict[str, Any]]:
    # Listed out of order: the DAG, not the list, decides what runs first.
    return [
        {"model": "ident", "input_map": {"x": "logits"}, "output_map": {"y": "OUT"}},
        {"model": "linear", "version": 1, "input_map": {"x": "IN"}, "output_map": {"logits": "logits"}},
    ]


def _repository(repo: Path) -> None:
    write_model(repo, "linear", 1, {"model.onnx": onnx_linear_model()})
    write_model(repo, "ident", 1, {"model.onnx": onnx_identity_model("FP32")})
    write_model(repo, "double", 1, {"model.py": textwrap.dedent(DOUBLE).encode()},
                {"max_batch_size": 8, "input": [_fp32("X", [3])], "output": [_fp32("Y", [3])]})  # fmt: skip
    write_model(repo, "pipe", 1, config=_ensemble(_linear_then_identity()))
    write_model(
        repo,
        "pipe_py",
        1,
        config=_ensemble(
            [
                {"model": "linear", "input_map": {"x": "IN"}, "output_map": {"logits": "logits"}},
                {"model": "double", "input_map": {"X": "logits"}, "output_map": {"Y": "OUT"}},
            ]
        ),
    )
    # A step output the step model does not have: refused at request time, naming the step.
    write_model(
        repo,
        "wrong_output",
        1,
        config=_ensemble([{"model": "linear", "input_map": {"x": "IN"}, "output_map": {"nope": "OUT"}}]),
    )
    bad = {
        "cycle": [
            {"model": "ident", "input_map": {"x": "b"}, "output_map": {"y": "a"}},
            {"model": "linear", "input_map": {"x": "a"}, "output_map": {"logits": "b", "probs": "OUT"}},
        ],
        "missing_model": [{"model": "not_here", "input_map": {"x": "IN"}, "output_map": {"y": "OUT"}}],
        "unmapped_input": [{"model": "ident", "input_map": {"x": "nowhere"}, "output_map": {"y": "OUT"}}],
        "unproduced_output": [{"model": "ident", "input_map": {"x": "IN"}, "output_map": {"y": "OTHER"}}],
        "no_steps": [],
        # Two ensembles that run each other: every request would call itself until its deadline.
        "loop_a": [{"model": "loop_b", "input_map": {"IN": "IN"}, "output_map": {"OUT": "OUT"}}],
        "loop_b": [{"model": "loop_a", "input_map": {"IN": "IN"}, "output_map": {"OUT": "OUT"}}],
    }
    for name, steps in bad.items():
        write_model(repo, name, 1, config=_ensemble(steps))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("ensembles")
    _repository(repo)
    with RunningNode(node_config(repo, plugins={"python": {"allow_code": True}})) as n:
        yield n


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, node: RunningNode) -> tuple[Any, Any]:
    host = node.config.server.host
    if request.param == "http":
        return httpclient.InferenceServerClient(f"{host}:{node.config.server.http_port}"), httpclient
    return grpcclient.InferenceServerClient(f"{host}:{node.config.server.grpc_port}"), grpcclient


def _infer(client: Any, module: Any, model: str, x: np.ndarray, inp: str = "x", out: str = "OUT") -> np.ndarray:
    tensor = module.InferInput(inp, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor]).as_numpy(out)


X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8


def test_an_ensemble_of_two_onnx_models_runs_each_step_through_the_node(
    client: tuple[Any, Any], node: RunningNode
) -> None:
    c, mod = client
    logits = _infer(c, mod, "linear", X, out="logits")
    before = {m: metric_value(node.url, "dlinfer_inference_request_success_total", m) for m in ("linear", "ident")}
    np.testing.assert_allclose(_infer(c, mod, "pipe", X, inp="IN"), logits, rtol=1e-6)
    # Each step was a request of its own model: admitted, scheduled and counted there.
    for m in ("linear", "ident"):
        assert metric_value(node.url, "dlinfer_inference_request_success_total", m) == before[m] + 1
    metadata = c.get_model_metadata("pipe")
    assert (metadata["platform"] if isinstance(metadata, dict) else metadata.platform) == "ensemble"


def test_an_ensemble_with_a_python_step(client: tuple[Any, Any]) -> None:
    c, mod = client
    logits = _infer(c, mod, "linear", X, out="logits")
    np.testing.assert_allclose(_infer(c, mod, "pipe_py", X, inp="IN"), logits * 2, rtol=1e-6)


def test_a_step_asking_an_output_its_model_lacks_fails_the_request_naming_the_step(client: tuple[Any, Any]) -> None:
    c, mod = client
    with pytest.raises(InferenceServerException, match=r"ensemble 'wrong_output' step 0 \(model 'linear'\).*'nope'"):
        _infer(c, mod, "wrong_output", X, inp="IN")
    np.testing.assert_allclose(_infer(c, mod, "pipe", X, inp="IN").shape, (2, 3))  # the node keeps serving


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("cycle", "steps form a cycle"),
        ("missing_model", "model 'not_here' is not in the repository"),
        ("unmapped_input", "tensor 'nowhere', which is neither an ensemble input nor any step's output"),
        ("unproduced_output", "output 'OUT' is not in any step's output_map"),
        ("no_steps", "has no steps"),
        ("loop_a", "ensemble 'loop_a' calls itself: loop_a -> loop_b -> loop_a"),
        ("loop_b", "ensemble 'loop_b' calls itself: loop_b -> loop_a -> loop_b"),
    ],
)
def test_bad_ensembles_are_refused_at_load(node: RunningNode, model: str, reason: str) -> None:
    index = httpclient.InferenceServerClient(f"127.0.0.1:{node.config.server.http_port}").get_model_repository_index()
    entry = next(e for e in index if e["name"] == model)
    assert entry["state"] == "UNAVAILABLE"
    assert reason in entry["reason"]
