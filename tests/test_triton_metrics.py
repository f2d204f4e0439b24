"""``[metrics] triton_names``: the per-model series under Triton's ``nv_inference_*`` names, as
Prometheus parses them, equal to dlinfer's own series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import requests

from dlinfer.api.testing import RunningNode, V2Client, node_config, onnx_linear_model, write_model

from .test_scheduler import scrape


def _serve_and_scrape(root: Path, **tables: dict) -> dict:
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(root, **tables)) as node:
        client = V2Client(node.url)
        for _ in range(3):
            client.infer("linear", {"x": np.ones((2, 4), np.float32)})
        bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}]}
        assert requests.post(f"{node.url}/v2/models/linear/infer", json=bad, timeout=10).status_code == 400
        return scrape(node.url)


def test_triton_names_mirror_the_dlinfer_series(tmp_path: Path) -> None:
    samples = _serve_and_scrape(tmp_path, metrics={"triton_names": True})
    key = (("model", "linear"), ("version", "1"))
    assert samples[("nv_inference_request_success", key)] == 3
    assert samples[("nv_inference_count", key)] == samples[("dlinfer_inference_count_total", key)] == 6
    assert samples[("nv_inference_exec_count", key)] == 3
    assert (
        samples[("nv_inference_request_duration_us", key)]
        == samples[("dlinfer_inference_request_duration_us_total", key)]
    )
    assert samples[("nv_inference_queue_duration_us", key)] >= 0
    assert samples[("nv_inference_compute_infer_duration_us", key)] > 0
    assert samples[("nv_inference_pending_request_count", key)] == 0
    failures = {k[1]: v for k, v in samples.items() if k[0] == "nv_inference_request_failure"}
    assert failures == {
        tuple(sorted([*key, ("reason", "OTHER")])): 1.0
    }  # dlinfer's "invalid"; Triton has no such reason


def test_off_by_default(tmp_path: Path) -> None:
    samples = _serve_and_scrape(tmp_path)
    assert not [name for name, _ in samples if name.startswith("nv_")]
