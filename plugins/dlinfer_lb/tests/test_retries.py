"""Retries on 429/503 to another node, deadlines, upstream errors passed through,
and a third-party strategy from the ``dlinfer_balancers`` hook."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
import requests

from dlinfer.api import Plugins, hookimpl
from dlinfer.api.testing import RunningNode, node_config, onnx_linear_model, write_model
from dlinfer.server import PLUGINS


@pytest.fixture(scope="module")
def busy_and_idle(tmp_path_factory, helpers):
    """Node A answers ``linear`` 100 ms late with a queue of one (so it refuses
    with 429 under load); node B is fast and unbounded."""
    root = tmp_path_factory.mktemp("busy")
    with contextlib.ExitStack() as stack:
        nodes = []
        for name, slow in (("a", True), ("b", False)):
            repo = root / name
            write_model(
                repo, "linear", 1, {"model.onnx": onnx_linear_model()}, config={"max_queue_size": 1} if slow else {}
            )
            config = node_config(repo)
            plugins = Plugins(config).load()
            plugins.register(helpers.Recorder("linear", 0.1) if slow else helpers.Recorder(), "recorder")
            nodes.append(stack.enter_context(RunningNode(config, plugins)))
        yield nodes


def test_overloaded_node_is_retried_elsewhere(busy_and_idle, start_gateway, helpers) -> None:
    a, b = busy_and_idle
    gw = start_gateway(strategy="swrr", nodes=[{"url": a.url, "weight": 20}, {"url": b.url, "weight": 1}])
    assert helpers.send(gw.url, "linear", 40, concurrency=8).count(200) == 40
    metrics = requests.get(f"{gw.url}/metrics", timeout=5).text
    retries = next(line for line in metrics.splitlines() if line.startswith("dlinfer_gateway_retries_total"))
    assert float(retries.split()[-1]) > 0
    assert 'reason="429"' in metrics


def test_upstream_error_reaches_the_client(busy_and_idle, start_gateway, helpers) -> None:
    a, _ = busy_and_idle
    gw = start_gateway(nodes=[a.url])
    statuses = helpers.send(gw.url, "linear", 12, concurrency=6)
    assert 200 in statuses and 429 in statuses

    async def one_refusal() -> str:
        async with aiohttp.ClientSession() as s:

            async def call() -> tuple[int, dict]:
                async with s.post(f"{gw.url}/v2/models/linear/infer", json=helpers.X) as r:
                    return r.status, await r.json()

            for status, doc in await asyncio.gather(*(call() for _ in range(6))):
                if status == 429:
                    return doc["error"]
        raise AssertionError("no 429")

    assert "queue limit 1" in asyncio.run(one_refusal())


def test_deadline_per_model(cluster, start_gateway) -> None:
    gw = start_gateway(nodes=[cluster.urls[2]], models={"p2c": {"deadline_ms": 20}})
    x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    r = requests.post(f"{gw.url}/v2/models/p2c/infer", json=x, timeout=5)
    assert r.status_code == 504 and "deadline of 20 ms" in r.json()["error"] and cluster.urls[2] in r.json()["error"]
    assert requests.post(f"{gw.url}/v2/models/linear/infer", json=x, timeout=5).status_code == 200


class FirstNode:
    """A third-party strategy: always the first candidate (no ``policy`` argument)."""

    name = "first"

    def pick(self, model, candidates, request):
        return min(candidates, key=lambda n: n.url)

    def observe(self, node, outcome, latency_s):
        pass


class StrategyPlugin:
    @hookimpl
    def dlinfer_balancers(self):
        return [FirstNode]


def test_strategy_from_another_plugin(cluster, start_gateway, helpers, tmp_path) -> None:
    config = helpers.gateway_config(
        tmp_path, strategy="swrr", nodes=cluster.urls, models={"linear": {"strategy": "first"}}
    )
    plugins = Plugins(config).load()
    plugins.register(StrategyPlugin(), "first-strategy")
    before = cluster.counts("linear")
    with RunningNode(config, plugins) as gw:
        assert gw.app[PLUGINS].registry("dlinfer_balancers")["first"].plugin == "first-strategy"
        assert helpers.send(gw.url, "linear", 20).count(200) == 20
    got = [a - b for a, b in zip(cluster.counts("linear"), before, strict=True)]
    assert got[cluster.urls.index(min(cluster.urls))] == 20


def test_unreachable_nodes_are_named_in_the_error(start_gateway, helpers, tmp_path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "linear", 1, {"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(repo)) as node:
        gw = start_gateway(nodes=[node.url], health={"interval_s": 60}, outlier={"consecutive_failures": 100})
        assert helpers.send(gw.url, "linear", 3).count(200) == 3
    # The node is gone; the gateway has not noticed yet, so it tries and reports why it failed.
    r = requests.post(f"{gw.url}/v2/models/linear/infer", json=helpers.X, timeout=10)
    assert r.status_code == 502
    assert r.json()["error"].startswith(f"model 'linear': no node could answer: {node.url}: cannot connect")
