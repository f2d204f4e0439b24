"""``GET /metrics`` of a real node: Triton-like per-model series, process metrics, unload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from dlinfer.plugins import Plugins
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_model

from .test_scheduler import scrape as samples


def labels(model: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": model, "version": "1", **extra}.items()))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    import dlinfer_onnx.plugin

    root: Path = tmp_path_factory.mktemp("models")
    write_model(root, "a", 1, {"model.onnx": onnx_linear_model(seed=1)})
    write_model(root, "b", 1, {"model.onnx": onnx_linear_model(seed=2)}, config={"dynamic_batching": {}})
    cfg = node_config(root)
    plugins = Plugins(cfg).load(entry_points=False)
    plugins.register(dlinfer_onnx.plugin, "onnx", "dlinfer-onnx")
    with RunningNode(cfg, plugins) as n:
        yield n


def infer(node: RunningNode, model: str, rows: int) -> requests.Response:
    x = np.ones((rows, 4), np.float32)
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": x.ravel().tolist()}]}
    return requests.post(f"{node.url}/v2/models/{model}/infer", json=doc, timeout=30)


def test_exposition_format_and_process_metrics(node: RunningNode) -> None:
    r = requests.get(f"{node.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    names = {name for name, _ in samples(node.url)}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names


@pytest.mark.parametrize("model", ["a", "b"])  # direct path and dynamic batcher
def test_per_model_counts_durations_and_batch_sizes(node: RunningNode, model: str) -> None:
    for rows in (1, 3, 2):
        assert infer(node, model, rows).status_code == 200
    bad = requests.post(
        f"{node.url}/v2/models/{model}/infer",
        json={"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1], "data": [1]}]},
        timeout=30,
    )
    assert bad.status_code == 400
    m = samples(node.url)
    key = labels(model)
    assert m[("dlinfer_inference_request_success_total", key)] == 3
    assert m[("dlinfer_inference_request_failure_total", labels(model, reason="invalid"))] == 1
    assert m[("dlinfer_inference_count_total", key)] == 6  # rows, as Triton counts inferences
    assert m[("dlinfer_inference_exec_count_total", key)] == 3  # sequential requests: nothing to merge
    assert m[("dlinfer_inference_batch_size_count", key)] == 3
    assert m[("dlinfer_inference_batch_size_sum", key)] == 6
    assert m[("dlinfer_inference_batch_size_bucket", labels(model, le="1.0"))] == 1
    assert m[("dlinfer_inference_batch_size_bucket", labels(model, le="4.0"))] == 3
    assert m[("dlinfer_inference_request_duration_seconds_count", key)] == 4
    assert m[("dlinfer_inference_queue_duration_seconds_count", key)] == 3
    assert m[("dlinfer_inference_compute_duration_seconds_count", key)] == 3
    for counter in ("request_duration_us", "queue_duration_us", "compute_infer_duration_us"):
        assert m[(f"dlinfer_inference_{counter}_total", key)] > 0
    assert m[("dlinfer_inference_pending_request_count", key)] == 0
    assert m[("dlinfer_inference_inflight_request_count", key)] == 0


def test_unload_removes_the_model_series(node: RunningNode) -> None:
    assert infer(node, "a", 1).status_code == 200
    assert requests.post(f"{node.url}/v2/repository/models/a/unload", timeout=30).status_code == 200
    try:
        m = samples(node.url)
        assert not any(dict(lbl).get("model") == "a" for _, lbl in m)
        assert ("dlinfer_inference_exec_count_total", labels("b")) in m
    finally:
        assert requests.post(f"{node.url}/v2/repository/models/a/load", timeout=30).status_code == 200
