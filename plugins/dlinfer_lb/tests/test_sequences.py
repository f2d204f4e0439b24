"""Stateful models behind the gateway: a sequence stays on one node of two.

The nodes serve the core tests' accumulator backend (a running sum per sequence,
``tests/scheduler_plugins/accumulate.py``): a request of a sequence that reached
the other node would be refused there (the sequence is unknown to it), so
correct sums prove that every sequence stayed on its node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.api import Plugins
from dlinfer.api.testing import RunningNode, node_config, write_model

PLUGINS_DIR = Path(__file__).resolve().parents[3] / "tests" / "scheduler_plugins"
CONTROLS = [
    {"name": "START", "kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]},
    {"name": "END", "kind": "CONTROL_SEQUENCE_END", "bool_false_true": [False, True]},
    {"name": "READY", "kind": "CONTROL_SEQUENCE_READY", "fp32_false_true": [0.0, 1.0]},
    {"name": "CORRID", "kind": "CONTROL_SEQUENCE_CORRID", "data_type": "UINT64"},
]


class StatefulNodes:
    """Nodes serving the accumulator as ``acc``; :meth:`stop` takes one away before the others."""

    def __init__(self, root: Path, n: int = 2) -> None:
        self.nodes: list[RunningNode] = []
        self._running: list[RunningNode] = []
        for i in range(n):
            repo = root / f"node{i}"
            # 16 slots: room for every sequence of a test, none waits for an idle one to be released
            config = {"max_batch_size": 16, "sequence_batching": {"control_input": CONTROLS}}
            write_model(repo, "acc", 1, {"accumulate.toml": b""}, config=config)
            cfg = node_config(repo, plugins={"plugins_dir": str(PLUGINS_DIR)})
            node = RunningNode(cfg, Plugins(cfg).load())
            self._running.append(node.__enter__())
            self.nodes.append(node)

    def stop(self, node: RunningNode) -> None:
        self._running.remove(node)
        node.__exit__(None, None, None)

    def close(self) -> None:
        while self._running:
            self.stop(self._running[-1])


def targets(nodes: list[RunningNode]) -> list[dict[str, str]]:
    return [{"url": n.url, "grpc": f"127.0.0.1:{n.config.server.grpc_port}"} for n in nodes]


def step(client: Any, value: int, **sequence: Any) -> int:
    mod = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    x = mod.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[value]], np.int32))
    return int(client.infer("acc", [x], **sequence).as_numpy("OUTPUT")[0, 0])


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[StatefulNodes]:
    nodes = StatefulNodes(tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()


def test_each_sequence_stays_on_one_node(two_nodes, start_gateway) -> None:
    # Round robin would alternate nodes request by request: the sequence routing must override it.
    gw = start_gateway(strategy="swrr", nodes=targets(two_nodes.nodes))
    clients = [
        httpclient.InferenceServerClient(f"127.0.0.1:{gw.config.server.http_port}"),
        grpcclient.InferenceServerClient(f"127.0.0.1:{gw.config.server.grpc_port}"),
    ]
    ids = list(range(1, 17))
    sums = {sid: [] for sid in ids}
    for n in range(4):
        for sid in ids:  # interleaved, and alternating HTTP and gRPC within each sequence
            client = clients[(sid + n) % 2]
            sums[sid].append(step(client, sid, sequence_id=sid, sequence_start=n == 0, sequence_end=n == 3))
    assert sums == {sid: [sid, 2 * sid, 3 * sid, 4 * sid] for sid in ids}
    ran = [
        sum(
            s["inference_stats"]["success"]["count"]
            for s in httpclient.InferenceServerClient(
                f"127.0.0.1:{n.config.server.http_port}"
            ).get_inference_statistics("acc")["model_stats"]
        )
        for n in two_nodes.nodes
    ]
    assert sum(ran) == 64 and all(r % 4 == 0 and r > 0 for r in ran)  # whole sequences on each node


def test_a_sequence_whose_node_stops_gets_an_error(two_nodes, start_gateway, helpers) -> None:
    nodes = two_nodes.nodes
    gw = start_gateway(nodes=targets(nodes))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{gw.config.server.grpc_port}")
    ids = list(range(100, 116))
    for sid in ids:
        assert step(client, 1, sequence_id=sid, sequence_start=True) == 1
    two_nodes.stop(nodes[1])  # the second node goes away mid-sequence
    helpers.wait_for(lambda: not helpers.nodes_status(gw.url)[nodes[1].url]["admitted"])
    kept, lost = [], []
    for sid in ids:
        try:
            kept.append(step(client, 2, sequence_id=sid, sequence_end=True))
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.UNAVAILABLE"
            assert f"held by node {nodes[1].url}" in str(exc) and "start the sequence again" in str(exc)
            lost.append(sid)
    assert kept and lost and kept == [3] * len(kept)  # none moved to the other node
