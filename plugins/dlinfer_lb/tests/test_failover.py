"""Fault injection: a node process killed under load, then started again."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import requests
import tomli_w

from dlinfer.api.testing import free_port, onnx_linear_model, write_model


class NodeProcess:
    """``dlinfer-core`` serving a tiny model in its own process, so it can be SIGKILLed."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root / name
        write_model(self.root / "models", "linear", 1, {"model.onnx": onnx_linear_model()})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "server": {"host": "127.0.0.1", "http_port": self.port, "grpc_port": free_port()},
            "repository": {"path": "models"},
            "threads": {"intra_op": 1},
        }
        (self.root / "node.toml").write_text(tomli_w.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        log = open(self.root / "node.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dlinfer.cli", "--config", str(self.root / "node.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        until = time.monotonic() + 60
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {(self.root / 'node.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError("node did not become ready")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def processes(tmp_path: Path):
    nodes = [NodeProcess(tmp_path, f"node{i}") for i in (1, 2, 3)]
    try:
        yield [n.start() for n in nodes]
    finally:
        for n in nodes:
            n.stop()


async def _load_until(url: str, stop: asyncio.Event, results: list[tuple[float, int]], concurrency: int) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while not stop.is_set():
                try:
                    async with session.post(f"{url}/v2/models/linear/infer", json=body) as r:
                        await r.read()
                        results.append((time.monotonic(), r.status))
                except aiohttp.ClientError:
                    results.append((time.monotonic(), 0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def test_killed_node_is_ejected_then_readmitted(processes, start_gateway, helpers) -> None:
    victim = processes[2]
    gw = start_gateway(
        strategy="least_outstanding",
        nodes=[p.url for p in processes],
        health={"interval_s": 0.2, "timeout_s": 2.0, "healthy_threshold": 2, "unhealthy_threshold": 2},
        outlier={"consecutive_failures": 2, "base_ejection_s": 1.0, "max_ejection_percent": 50},
    )
    helpers.wait_for(lambda: all(n["admitted"] for n in helpers.nodes_status(gw.url).values()), what="3 nodes")

    results: list[tuple[float, int]] = []
    marks: dict[str, float] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        load = asyncio.create_task(_load_until(gw.url, stop, results, concurrency=8))
        while len(results) < 300:
            await asyncio.sleep(0.01)
        marks["kill"] = time.monotonic()
        await asyncio.to_thread(victim.kill)
        # The ejection window: until the gateway no longer routes to the dead node.
        while (await asyncio.to_thread(helpers.nodes_status, gw.url))[victim.url]["admitted"]:
            await asyncio.sleep(0.02)
        marks["out"] = time.monotonic()
        count = len(results)
        while len(results) < count + 500:
            await asyncio.sleep(0.01)
        stop.set()
        await load

    asyncio.run(scenario())
    window = [s for t, s in results if marks["kill"] <= t <= marks["out"]]
    after = [s for t, s in results if t > marks["out"]]
    assert len(after) >= 500
    assert sum(s != 200 for s in window) <= 0.005 * max(len(window), 1), window
    assert all(s == 200 for s in after)
    status = helpers.nodes_status(gw.url)[victim.url]
    assert not status["admitted"] and status["last_error"]

    # Back on the same port: re-admitted after its ejection time and two passed checks.
    victim.start()
    helpers.wait_for(
        lambda: helpers.nodes_status(gw.url)[victim.url]["admitted"], timeout_s=15, what="the node's re-admission"
    )
    before = helpers.nodes_status(gw.url)[victim.url]["requests"]
    assert helpers.send(gw.url, "linear", 90, concurrency=3).count(200) == 90
    assert helpers.nodes_status(gw.url)[victim.url]["requests"] - before >= 10
