"""The effective intra-op thread count per model instance, as the frameworks really run it.

One rule (``dlinfer.model.intra_op_threads``): the model's ``threads``, else the node's
``[threads] intra_op`` (both per instance), else the usable CPUs shared among the model's
instances. Loaders and the mkl ``threads`` optimizer follow it; these tests read the count
from the ONNX Runtime session a node serves and from torch on the worker thread itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from dlinfer.config import usable_cpus
from dlinfer.server import REPOSITORY
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_model

tt = pytest.importorskip("dlinfer_torch.testing")
from dlinfer_torch import threads as torch_threads  # noqa: E402

CASES = [  # node [threads], model config, expected threads per instance
    pytest.param({"intra_op": 3}, {"instance_count": 2}, 3, id="node-setting-per-instance"),
    pytest.param({"intra_op": 3}, {"instance_count": 2, "threads": 2}, 2, id="model-setting-wins"),
    pytest.param({}, {"instance_count": 2}, max(1, usable_cpus() // 2), id="cpus-shared-among-instances"),
]


def _session_threads(node: RunningNode, name: str) -> int:
    runner = node.app[REPOSITORY].get(name).runner
    return runner.session.get_session_options().intra_op_num_threads


def _torch_threads(node: RunningNode, name: str) -> float:
    """ThreadCount answers torch.get_num_threads() of the worker thread that ran it."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]}
    resp = requests.post(f"{node.url}/v2/models/{name}/infer", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["outputs"][0]["data"][0]


def _write_models(repo: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    write_model(repo, "linear", files={"model.onnx": onnx_linear_model()}, config=config)
    write_model(
        repo,
        "count",
        files={"model.pt": tt.save_state_dict(tt.ThreadCount(), tmp_path / "count.pt").read_bytes()},
        config={
            **config,
            "max_batch_size": 4,
            "input": [{"name": "x", "datatype": "FP32", "shape": [1]}],
            "parameters": {"model_class": "dlinfer_torch.testing:ThreadCount"},
        },
    )


@pytest.mark.parametrize(("node_threads", "model", "expected"), CASES)
def test_onnx_and_torch_loaders_run_with_the_effective_count(
    tmp_path: Path, node_threads: dict[str, int], model: dict[str, Any], expected: int
) -> None:
    if not torch_threads.per_thread():
        pytest.skip("this torch build's intra-op pool is process-wide (not OpenMP)")
    _write_models(tmp_path / "models", tmp_path, model)
    with RunningNode(node_config(tmp_path / "models", threads=node_threads)) as node:
        assert _session_threads(node, "linear") == expected
        assert _torch_threads(node, "count") == expected


def test_threads_optimizer_follows_the_node_setting(tmp_path: Path) -> None:
    """The mkl ``threads`` optimizer used to see 0 in the model's ``threads`` when only the node
    set ``[threads] intra_op``, and sized torch on the loading thread, not the workers."""
    pytest.importorskip("dlinfer_mkl")
    if not torch_threads.per_thread():
        pytest.skip("this torch build's intra-op pool is process-wide (not OpenMP)")
    repo = tmp_path / "models"
    _write_models(repo, tmp_path, {"instance_count": 2, "optimize": ["threads"]})
    with RunningNode(node_config(repo, threads={"intra_op": 3})) as node:
        assert _session_threads(node, "linear") == 3
    config = {"optimize": ["threads"], "optimize_options": {"threads": {"intra_op": 2}}}
    _write_models(tmp_path / "models2", tmp_path, config)
    with RunningNode(node_config(tmp_path / "models2", threads={"intra_op": 3})) as node:
        assert _session_threads(node, "linear") == 2
        assert _torch_threads(node, "count") == 2
