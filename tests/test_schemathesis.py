"""Schemathesis fuzzes the core HTTP API from the node's own OpenAPI document.

Every core operation gets a bounded number of generated requests against a
real node, with path parameters drawn partly from the real models (so inference
and metadata are fuzzed past the 404s). Each response must be no 5xx and must
conform to the document: documented status, content type, headers and body schema.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import dlinfer_onnx.plugin
from dlinfer.plugins import Plugins
from dlinfer.testing import RunningNode, node_config, onnx_identity_model, onnx_linear_model, write_model


def no_server_error(ctx: object, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """No 5xx, except the designed 503 for a model that is not ready (it failed to load).

    Schemathesis's own ``not_a_server_error`` flags every 5xx; a crash is a 500,
    while 503 with the model's reason is the documented answer for a broken model.
    """
    if response.status_code == 503 and "is not ready" in response.json().get("error", ""):
        return
    not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 40
TOKEN = "fuzz-token"
MODELS = ["linear", "id_bytes", "id_int8", "broken", "spare"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """Core plus the ONNX loader only: the core API is what is under test."""
    root = tmp_path_factory.mktemp("models")
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model(seed=1)})
    write_model(root, "linear", 2, {"model.onnx": onnx_linear_model(seed=2)}, config={"version_policy": {"all": True}})
    write_model(root, "id_bytes", 1, {"model.onnx": onnx_identity_model("BYTES")})
    write_model(root, "id_int8", 1, {"model.onnx": onnx_identity_model("INT8")})
    write_model(root, "broken", 1, {"model.onnx": b"not an onnx file"})
    write_model(root, "spare", 1, {"model.onnx": onnx_linear_model(seed=3)})
    # Control mode 'none' would load 'spare' too; keep it unloaded so load/unload see both states.
    config = node_config(
        root,
        repository={"startup_models": ["linear", "id_*", "broken"], "control_token": TOKEN},
        limits={"max_body_bytes": 64 * 1024},
    )
    plugins = Plugins(config).load(entry_points=False)
    plugins.register(dlinfer_onnx.plugin, "onnx", "dlinfer-onnx")
    with RunningNode(config, plugins) as n:
        yield n


def _operations(node: RunningNode) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{node.url}/v2/-/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_has_the_core_operations(node: RunningNode) -> None:
    ops = {f"{op.method.upper()} {op.path}" for op in _operations(node)}
    assert {"POST /v2/models/{model}/infer", "POST /v2/repository/index", "GET /metrics", "GET /"} <= ops
    assert not any(op.startswith(("GET /v1/", "POST /v1/")) for op in ops)  # no TF-Serving plugin in this node


def _fuzz(op: schemathesis.APIOperation, url: str, seen: set[tuple[str, int]]) -> None:
    """Send generated requests for one operation; raise on the smallest failing one."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples on every run: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(op.as_strategy())
        params = case.path_parameters or {}
        # Half the time, aim at a real model (and version) instead of a random name.
        if "model" in params and data.draw(st.booleans()):
            params["model"] = data.draw(st.sampled_from(MODELS))
            if "version" in params:
                params["version"] = data.draw(st.sampled_from(["1", "2", "3"]))
        # Model control with and without the token.
        headers = {"Authorization": f"Bearer {TOKEN}"} if data.draw(st.booleans()) else {}
        response = case.call_and_validate(
            base_url=url, headers=headers, checks=CHECKS, allow_redirects=False, timeout=30
        )
        seen.add((f"{op.method.upper()} {op.path}", response.status_code))

    check()


def test_fuzz_core_api(node: RunningNode) -> None:
    failures: list[str] = []
    seen: set[tuple[str, int]] = set()
    for op in _operations(node):
        try:
            _fuzz(op, node.url, seen)
        except (Exception, BaseExceptionGroup) as exc:  # fuzz every operation, then report all failures
            failures.append(f"{op.method.upper()} {op.path}: {exc}")
    assert not failures, "\n\n".join(failures)
    # The examples reached past routing and validation: real models answered and refused.
    assert {
        ("GET /v2/models/{model}", 200),
        ("POST /v2/models/{model}/infer", 400),
        ("POST /v2/repository/models/{model}/load", 200),
        ("POST /v2/repository/models/{model}/load", 401),
        ("POST /v2/repository/models/{model}/unload", 200),
    } <= seen
    # The node survived the fuzzing and still answers correctly.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.post(f"{node.url}/v2/repository/models/linear/load", headers=auth).status_code == 200
    assert requests.get(f"{node.url}/v2/health/ready").json() == {"ready": True}
    r = requests.post(
        f"{node.url}/v2/models/linear/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
    )
    assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["logits", "probs"]
