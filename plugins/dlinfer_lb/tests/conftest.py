"""Real dlinfer nodes and gateways on loopback ports for the lb tests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import numpy as np
import pytest
import requests

from dlinfer.api import BUILTIN_PLUGINS, Plugins, hookimpl, node_config_from_dict, testing
from dlinfer.api.testing import RunningNode, free_port, node_config, onnx_identity_model, onnx_linear_model, write_model

LOCAL_V2 = [p for p in ("dlinfer.server.v2_http", "dlinfer.server.v2_grpc") if p in BUILTIN_PLUGINS]


class Recorder:
    """A node-side plugin: counts the inferences a node ran per model, and makes
    one model slow on this node (a ``dlinfer_infer`` wrapper, the core's own
    observability hook)."""

    def __init__(self, slow_model: str = "", delay_s: float = 0.0) -> None:
        self.slow_model = slow_model
        self.delay_s = delay_s
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @hookimpl(wrapper=True)
    def dlinfer_infer(self, model: Any, inputs: dict[str, np.ndarray]) -> Any:
        if model.name == self.slow_model:
            time.sleep(self.delay_s)
        outputs = yield
        with self._lock:
            self.counts[model.name] += len(next(iter(inputs.values())))
        return outputs

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


class Cluster:
    """Three nodes: ``linear``, ``p2c`` and ``identity`` on all, ``only12`` on
    nodes 1 and 2; node 3 answers ``p2c`` 50 ms late."""

    def __init__(self, root: Path) -> None:
        self.nodes: list[RunningNode] = []
        self.recorders: list[Recorder] = []
        self._stack = contextlib.ExitStack()
        for i in (1, 2, 3):
            repo = root / f"node{i}"
            write_model(repo, "linear", 1, {"model.onnx": onnx_linear_model()})
            write_model(repo, "p2c", 1, {"model.onnx": onnx_linear_model()})
            write_model(repo, "identity", 1, {"model.onnx": onnx_identity_model("FP32", ["batch", "n"])})
            if i in (1, 2):
                write_model(repo, "only12", 1, {"model.onnx": onnx_linear_model(seed=1)})
            recorder = Recorder("p2c", 0.05) if i == 3 else Recorder()
            config = node_config(repo)
            plugins = Plugins(config).load()
            plugins.register(recorder, "recorder")
            self.nodes.append(self._stack.enter_context(RunningNode(config, plugins)))
            self.recorders.append(recorder)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def counts(self, model: str) -> list[int]:
        return [r.snapshot()[model] for r in self.recorders]

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.close()


def gateway_config(base: Path, **lb: Any) -> Any:
    """A gateway's NodeConfig: free ports, the local V2 frontends off, ``[plugins.lb]`` = ``lb``."""
    settings = {
        "enabled": True,
        "health": {"interval_s": 0.2, "timeout_s": 5.0},  # generous: CI machines are busy
        **lb,
    }
    data = {
        "server": {"host": "127.0.0.1", "http_port": free_port(), "grpc_port": free_port()},
        "repository": {"path": "no-models"},
        "plugins": {"disable": LOCAL_V2, "lb": settings},
    }
    return node_config_from_dict(data, source=str(base / "gateway.toml"), base_dir=str(base))


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    """Start gateways with ``[plugins.lb]`` settings; all are stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(**lb: Any) -> RunningNode:
            return stack.enter_context(RunningNode(gateway_config(tmp_path, **lb)))

        yield start


X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}


async def _load(url: str, model: str, n: int, concurrency: int, headers: dict[str, str] | None) -> list[int]:
    statuses: list[int] = []
    queue = iter(range(n))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for _ in queue:
                async with session.post(f"{url}/v2/models/{model}/infer", json=X, headers=headers) as r:
                    await r.read()
                    statuses.append(r.status)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def send(url: str, model: str, n: int, concurrency: int = 8, headers: dict[str, str] | None = None) -> list[int]:
    """Send ``n`` inference requests with ``concurrency`` in flight; the statuses."""
    return asyncio.run(_load(url, model, n, concurrency, headers))


wait_for = functools.partial(testing.wait_for, timeout_s=10.0, interval_s=0.05)


def nodes_status(gateway_url: str) -> dict[str, dict[str, Any]]:
    doc = requests.get(f"{gateway_url}/v2/-/nodes", timeout=5).json()
    return {n["url"]: n for n in doc["nodes"]}


@pytest.fixture(scope="session")
def helpers() -> Any:
    """send / wait_for / nodes_status / gateway_config / Recorder for the tests."""

    return SimpleNamespace(
        send=send, wait_for=wait_for, nodes_status=nodes_status, gateway_config=gateway_config, X=X, Recorder=Recorder
    )
