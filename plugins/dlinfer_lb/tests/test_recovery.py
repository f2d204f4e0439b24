"""A node that stops and comes back on the same port gets its share again at once, whatever the strategy."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlinfer.api import Plugins
from dlinfer.api.testing import RunningNode, node_config, onnx_linear_model, write_model


class RestartableNodes:
    """Three in-process nodes serving ``linear``; any of them can be stopped and started again on its port."""

    def __init__(self, root: Path, recorder: type) -> None:
        self._recorder = recorder
        self.configs = []
        for i in (1, 2, 3):
            write_model(root / f"node{i}", "linear", 1, {"model.onnx": onnx_linear_model()})
            self.configs.append(node_config(root / f"node{i}"))
        self.running: list[RunningNode | None] = [None] * 3
        self.recorders: list = [None] * 3
        for i in range(3):
            self.start(i)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{c.server.http_port}" for c in self.configs]

    def start(self, i: int) -> None:
        """Start node ``i`` with a fresh count of the inferences it ran."""
        self.recorders[i] = self._recorder()
        plugins = Plugins(self.configs[i]).load()
        plugins.register(self.recorders[i], "recorder")
        self.running[i] = RunningNode(self.configs[i], plugins).__enter__()

    def stop(self, i: int) -> None:
        node, self.running[i] = self.running[i], None
        if node is not None:
            node.__exit__(None, None, None)

    def counts(self) -> list[int]:
        return [r.snapshot()["linear"] for r in self.recorders]


@pytest.fixture
def nodes(tmp_path: Path, helpers) -> Iterator[RestartableNodes]:
    cluster = RestartableNodes(tmp_path / "nodes", helpers.Recorder)
    try:
        yield cluster
    finally:
        for i in range(3):
            with contextlib.suppress(Exception):
                cluster.stop(i)


@pytest.mark.parametrize("strategy", ["p2c", "swrr", "least_outstanding"])
def test_restarted_node_gets_its_share_within_seconds(strategy, nodes, start_gateway, helpers) -> None:
    # Weights of 8 make swrr's failure penalty visible (the other strategies ignore them); a 30 s
    # ejection (Envoy's default) must not hold back a node its health checks saw come back.
    gw = start_gateway(
        strategy=strategy, nodes=[{"url": u, "weight": 8} for u in nodes.urls], outlier={"base_ejection_s": 30.0}
    )
    helpers.wait_for(lambda: all(n["admitted"] for n in helpers.nodes_status(gw.url).values()), what="3 nodes")
    assert helpers.send(gw.url, "linear", 60, concurrency=3).count(200) == 60
    victim = nodes.urls[2]

    # Down: its requests fail to connect and are retried elsewhere, until health handling takes it out.
    nodes.stop(2)
    assert helpers.send(gw.url, "linear", 60, concurrency=3).count(200) == 60
    helpers.wait_for(lambda: not helpers.nodes_status(gw.url)[victim]["healthy"], what="the node marked unhealthy")
    assert helpers.nodes_status(gw.url)[victim]["failures"] > 0

    # Back on the same port: admitted after its passed checks, then a fair share at once.
    nodes.start(2)
    back = time.monotonic()
    helpers.wait_for(lambda: helpers.nodes_status(gw.url)[victim]["admitted"], what="the node's re-admission")
    assert helpers.send(gw.url, "linear", 150, concurrency=3).count(200) == 150
    got = nodes.counts()
    # A third would be 50; p2c leans to whichever node answered a little faster, so ask for half of that.
    assert got[2] >= 25, got
    assert time.monotonic() - back < 10
