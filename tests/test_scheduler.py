"""The scheduler through a real node: dynamic batching, queue limits, deadlines.

Slow models come from a real single-file plugin (``scheduler_plugins/slow.py``,
loaded through ``plugins_dir``) whose model sleeps; batching correctness is
checked on real ONNX models against ONNX Runtime in-process. Counts are read
from ``/metrics``. Nothing here asserts a timing: tests wait on observable
state (queue depth, in-flight count) instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from dlinfer.config import NodeConfig
from dlinfer.plugins import Plugins
from dlinfer.testing import (
    RunningNode,
    node_config,
    onnx_identity_model,
    onnx_linear_model,
    wait_for,
    write_model,
)
from dlinfer.testing import metric_value as metric

PLUGINS_DIR = Path(__file__).parent / "scheduler_plugins"
SLOW = {"slow.toml": b""}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` keyed by (name, sorted labels)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def body(x: np.ndarray, name: str = "x", **params: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    if params:
        doc["parameters"] = params
    return doc


def post(url: str, model: str, doc: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/v2/models/{model}/infer", json=doc, timeout=60)


def output(resp: requests.Response, name: str) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    out = {o["name"]: o for o in resp.json()["outputs"]}[name]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("models")
    record = tmp_path_factory.mktemp("calls")
    far = 30_000_000  # the batch leaves on its preferred size long before this delay
    write_model(
        root,
        "linear",
        1,
        {"model.onnx": onnx_linear_model(seed=7)},
        config={"max_batch_size": 16, "dynamic_batching": {"preferred_batch_size": [10], "max_queue_delay_us": far}},
    )
    write_model(
        root,
        "delayed",
        1,
        {"model.onnx": onnx_linear_model(seed=8)},
        config={"max_batch_size": 16, "dynamic_batching": {"preferred_batch_size": [8], "max_queue_delay_us": 50_000}},
    )
    write_model(
        root,
        "ident",
        1,
        {"model.onnx": onnx_identity_model("FP32", ["batch", "n"])},
        config={"max_batch_size": 8, "dynamic_batching": {"preferred_batch_size": [2], "max_queue_delay_us": far}},
    )
    write_model(
        root,
        "slow_batched",
        1,
        SLOW,
        config={
            "max_batch_size": 16,
            "dynamic_batching": {"preferred_batch_size": [8], "max_queue_delay_us": far},
            "parameters": {"delay_s": 0.05},
        },
    )
    for name, batching in (("slow_direct", None), ("slow_queue", {})):
        cfg: dict[str, Any] = {
            "max_batch_size": 4,
            "instance_count": 1,
            "max_queue_size": 1,
            # Long enough for the test to queue and refuse requests behind the first one, even on a busy machine.
            "parameters": {"delay_s": 2.0, "record": str(record / f"{name}.log")},
        }
        if batching is not None:
            cfg["dynamic_batching"] = batching
        write_model(root, name, 1, SLOW, config=cfg)
    write_model(
        root,
        "slow_pair",
        1,
        SLOW,
        config={"instance_count": 2, "parameters": {"delay_s": 1.0, "record": str(record / "slow_pair.log")}},
    )
    write_model(
        root,
        "slow_timeout",
        1,
        SLOW,
        config={"timeout_ms": 300, "parameters": {"delay_s": 1.0, "record": str(record / "slow_timeout.log")}},
    )
    cfg = node_config(root, plugins={"plugins_dir": str(PLUGINS_DIR)})
    with RunningNode(cfg, node_plugins(cfg)) as n:
        n.record = record  # type: ignore[attr-defined]
        yield n


def node_plugins(cfg: NodeConfig) -> Plugins:
    """Built-ins, the ONNX backend and the ``plugins_dir`` test backend; no other installed plugin."""
    import dlinfer_onnx.plugin

    plugins = Plugins(cfg).load(entry_points=False)
    plugins.register(dlinfer_onnx.plugin, "onnx", "dlinfer-onnx")
    return plugins


def calls(node: RunningNode, model: str) -> list[int]:
    """Batch sizes the slow model was actually called with."""
    f = node.record / f"{model}.log"  # type: ignore[attr-defined]
    return [int(line) for line in f.read_text().split()] if f.exists() else []


def test_concurrent_requests_merge_into_one_execution(node: RunningNode) -> None:
    xs = [np.full((1, 3), i, dtype=np.float32) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        resps = list(pool.map(lambda x: post(node.url, "slow_batched", body(x)), xs))
    for x, r in zip(xs, resps, strict=True):
        np.testing.assert_array_equal(output(r, "y"), x * 2 + 1)
    m = scrape(node.url)
    key = (("model", "slow_batched"), ("version", "1"))
    assert m[("dlinfer_inference_count_total", key)] == 8
    assert m[("dlinfer_inference_exec_count_total", key)] == 1
    assert m[("dlinfer_inference_batch_size_sum", key)] == 8
    assert m[("dlinfer_inference_request_success_total", key)] == 8


def test_mixed_batch_sizes_split_back_in_order(node: RunningNode) -> None:
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 2, 3, 4)]  # 10 rows: the preferred size
    with ThreadPoolExecutor(4) as pool:
        resps = list(pool.map(lambda x: post(node.url, "linear", body(x)), xs))
    sess = ort.InferenceSession(onnx_linear_model(seed=7), providers=["CPUExecutionProvider"])
    for x, r in zip(xs, resps, strict=True):
        logits, probs = sess.run(["logits", "probs"], {"x": x})
        np.testing.assert_allclose(output(r, "logits"), logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(output(r, "probs"), probs, rtol=1e-5, atol=1e-6)
    assert metric(node.url, "dlinfer_inference_count_total", "linear") == 10
    assert metric(node.url, "dlinfer_inference_exec_count_total", "linear") == 1


def test_short_batch_leaves_when_the_queue_delay_runs_out(node: RunningNode) -> None:
    # 3 rows never reach the preferred size 8: the oldest request's delay releases them.
    xs = [np.full((1, 4), i, dtype=np.float32) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        resps = list(pool.map(lambda x: post(node.url, "delayed", body(x)), xs))
    sess = ort.InferenceSession(onnx_linear_model(seed=8), providers=["CPUExecutionProvider"])
    for x, r in zip(xs, resps, strict=True):
        np.testing.assert_allclose(output(r, "probs"), sess.run(["probs"], {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert metric(node.url, "dlinfer_inference_count_total", "delayed") == 3
    assert 1 <= metric(node.url, "dlinfer_inference_exec_count_total", "delayed") <= 3


def test_different_non_batch_shapes_are_not_merged(node: RunningNode) -> None:
    xs = [np.arange(n, dtype=np.float32).reshape(1, n) + k for n in (3, 5) for k in (0, 10)]
    with ThreadPoolExecutor(4) as pool:
        resps = list(pool.map(lambda x: post(node.url, "ident", body(x)), xs))
    for x, r in zip(xs, resps, strict=True):
        np.testing.assert_array_equal(output(r, "y"), x)
    # [1,3]+[1,3] and [1,5]+[1,5]: two executions of the preferred size 2.
    assert metric(node.url, "dlinfer_inference_exec_count_total", "ident") == 2
    assert metric(node.url, "dlinfer_inference_count_total", "ident") == 4


def _in_background(fn: Callable[[], requests.Response]) -> tuple[threading.Thread, list[requests.Response]]:
    out: list[requests.Response] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


@pytest.mark.parametrize("model", ["slow_direct", "slow_queue"])
def test_queue_full_is_refused_with_429(node: RunningNode, model: str) -> None:
    x = np.ones((1, 2), dtype=np.float32)
    before = calls(node, model)
    running, r1 = _in_background(lambda: post(node.url, model, body(x)))
    wait_for(lambda: calls(node, model) == [*before, 1], "the first request to reach the model")
    queued, r2 = _in_background(lambda: post(node.url, model, body(x + 1)))
    wait_for(lambda: metric(node.url, "dlinfer_inference_pending_request_count", model) == 1, "a queued request")
    refused = post(node.url, model, body(x + 2))
    assert refused.status_code == 429
    assert "overloaded" in refused.json()["error"]
    running.join()
    queued.join()
    np.testing.assert_array_equal(output(r1[0], "y"), x * 2 + 1)
    np.testing.assert_array_equal(output(r2[0], "y"), (x + 1) * 2 + 1)
    assert calls(node, model) == [*before, 1, 1]
    assert metric(node.url, "dlinfer_inference_request_failure_total", model, reason="overloaded") == 1


@pytest.mark.parametrize("model", ["slow_direct", "slow_queue"])
def test_request_timeout_expires_in_queue_without_compute(node: RunningNode, model: str) -> None:
    x = np.ones((1, 2), dtype=np.float32)
    before = len(calls(node, model))
    running, r1 = _in_background(lambda: post(node.url, model, body(x)))
    wait_for(lambda: len(calls(node, model)) == before + 1, "the first request to reach the model")
    late = post(node.url, model, body(x, timeout=100_000))  # V2 'timeout' parameter: 100 ms in µs
    assert late.status_code == 504
    running.join()
    assert r1[0].status_code == 200
    # The expired request never reached the model: one call, not two.
    assert len(calls(node, model)) == before + 1
    assert metric(node.url, "dlinfer_inference_request_failure_total", model, reason="deadline") >= 1


def test_model_timeout_ms_applies_to_every_request(node: RunningNode) -> None:
    x = np.ones((1, 2), dtype=np.float32)
    first, r1 = _in_background(lambda: post(node.url, "slow_timeout", body(x)))
    wait_for(lambda: len(calls(node, "slow_timeout")) == 1, "the first request to reach the model")
    second = post(node.url, "slow_timeout", body(x))
    first.join()
    assert r1[0].status_code == 504  # its compute outlasted timeout_ms
    assert second.status_code == 504  # expired while queued behind it
    # The abandoned call still runs to its end; the expired request never starts after it.
    wait_for(lambda: metric(node.url, "dlinfer_inference_exec_count_total", "slow_timeout") == 1, "the call to end")
    assert calls(node, "slow_timeout") == [1]


def test_bad_timeout_parameter_is_rejected(node: RunningNode) -> None:
    r = post(node.url, "slow_batched", body(np.ones((1, 2), np.float32), timeout=-5))
    assert r.status_code == 400


def test_instances_run_calls_concurrently(node: RunningNode) -> None:
    x = np.ones((1, 2), dtype=np.float32)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(post, node.url, "slow_pair", body(x)) for _ in range(2)]
        # Both calls reach the model before either answers: two instances, two threads.
        wait_for(lambda: calls(node, "slow_pair") == [1, 1], "both calls to start")
        assert not any(f.done() for f in futures)
        for f in futures:
            np.testing.assert_array_equal(output(f.result(), "y"), x * 2 + 1)


def test_instances_share_the_cores_by_default(tmp_path: Path) -> None:
    from dlinfer.config import node_config_from_dict
    from dlinfer.model import model_config_from_dict
    from dlinfer_onnx.loader import OnnxLoader

    default = OnnxLoader(node_config_from_dict({"threads": {"intra_op": 0}}))
    cores = os.cpu_count() or 1
    assert default.threads(model_config_from_dict({"instance_count": 1}, "t")) == cores
    assert default.threads(model_config_from_dict({"instance_count": 2}, "t")) == max(1, cores // 2)
    assert default.threads(model_config_from_dict({"instance_count": 2, "threads": 3}, "t")) == 3
    pinned = OnnxLoader(node_config_from_dict({"threads": {"intra_op": 5}}))
    assert pinned.threads(model_config_from_dict({"instance_count": 4}, "t")) == 5
