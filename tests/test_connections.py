"""Connections cannot pin the server: a header deadline, an idle timeout and a
connection cap on the HTTP port (the node's and the gateway's), the handshake
deadline on the gRPC port.

Raw sockets (``asyncio.open_connection``) play the slow and idle clients; a
well-behaved client is ``requests``. Timeouts in these configs are small; the
tests only bound how long they wait for a close, never measure it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import numpy as np
import pytest
import requests

from dlinfer.config import NodeConfig
from dlinfer.server import REPOSITORY
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, wait_for, write_model

from .test_scheduler import PLUGINS_DIR, SLOW, body, node_plugins, post

#: Longest a test waits for the server to close a connection (the timeouts are 0.5 s).
CLOSE_WITHIN_S = 5.0
PARTIAL_HEADERS = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n"  # the blank line never comes


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(CLOSE_WITHIN_S):
        return await reader.read()


async def connect(port: int, send: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if send:
        writer.write(send)
        await writer.drain()
    return reader, writer


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model()})
    cfg = node_config(root, limits={"header_timeout_s": 0.5, "idle_timeout_s": 0.5})
    with RunningNode(cfg) as n:
        yield n


def test_slow_headers_get_408_and_are_disconnected(node: RunningNode) -> None:
    async def scenario() -> bytes:
        reader, writer = await connect(node.config.server.http_port, PARTIAL_HEADERS)
        try:
            return await until_closed(reader)
        finally:
            writer.close()

    answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"limits.header_timeout_s" in answer
    assert requests.get(f"{node.url}/v2/health/live", timeout=5).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(node: RunningNode) -> None:
    async def scenario() -> bytes:
        reader, writer = await connect(node.config.server.http_port)
        try:
            return await until_closed(reader)
        finally:
            writer.close()

    assert asyncio.run(scenario()) == b""


def test_an_idle_keep_alive_connection_is_closed(node: RunningNode) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        reader, writer = await connect(node.config.server.http_port, PARTIAL_HEADERS + b"\r\n")
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length"))
            await reader.readexactly(length)
            return head, await until_closed(reader)
        finally:
            writer.close()

    head, after = asyncio.run(scenario())
    assert head.startswith(b"HTTP/1.1 200 ")
    assert after == b""  # kept open after the response, then closed without a word once idle


def test_half_sent_requests_cannot_lock_out_other_clients(tmp_path: Path) -> None:
    """Over the cap, a new connection displaces the oldest one still sending its headers, so a
    well-behaved client is served at once although the header timeout is far away."""
    cfg = node_config(tmp_path, limits={"header_timeout_s": 60, "max_connections": 4})
    with RunningNode(cfg) as node:
        port = node.config.server.http_port

        async def scenario() -> list[bytes]:
            conns = [await connect(port, PARTIAL_HEADERS) for _ in range(12)]
            try:
                served = await asyncio.to_thread(requests.get, f"{node.url}/v2/health/live", timeout=10)
                assert served.status_code == 200
                # Each connection past the fourth displaced the oldest half-sent one.
                return [await until_closed(reader) for reader, _ in conns[:8]]
            finally:
                for _, writer in conns:
                    writer.close()

        assert asyncio.run(scenario()) == [b""] * 8


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(tmp_path: Path) -> None:
    write_model(tmp_path, "slow", 1, SLOW, config={"instance_count": 1, "parameters": {"delay_s": 1.0}})
    cfg = node_config(tmp_path, plugins={"plugins_dir": str(PLUGINS_DIR)}, limits={"max_connections": 2})
    with RunningNode(cfg, node_plugins(cfg)) as node:
        x = np.ones((1, 2), np.float32)
        results: list[requests.Response] = []
        threads = [threading.Thread(target=lambda: results.append(post(node.url, "slow", body(x)))) for _ in range(2)]
        for t in threads:
            t.start()
        model = node.app[REPOSITORY].get("slow")
        wait_for(lambda: model.inflight == 2, "two requests in progress")
        refused = requests.get(f"{node.url}/v2/health/live", timeout=5)
        assert refused.status_code == 503, refused.text
        assert "limits.max_connections" in refused.json()["error"]
        assert refused.headers["Retry-After"] == "1"
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200, 200]
        assert requests.get(f"{node.url}/v2/health/live", timeout=5).status_code == 200


def test_the_gateway_has_the_same_header_deadline(gateway_config: Callable[[list[str]], NodeConfig]) -> None:
    cfg = gateway_config([])
    cfg = attrs.evolve(cfg, limits=attrs.evolve(cfg.limits, header_timeout_s=0.5))
    with RunningNode(cfg) as gateway:

        async def scenario() -> bytes:
            reader, writer = await connect(cfg.server.http_port, PARTIAL_HEADERS)
            try:
                return await until_closed(reader)
            finally:
                writer.close()

        assert asyncio.run(scenario()).startswith(b"HTTP/1.1 408 ")
        assert requests.get(f"{gateway.url}/v2/health/live", timeout=5).status_code == 200


def test_grpc_connection_that_never_speaks_is_closed(node: RunningNode) -> None:
    async def scenario() -> bytes:
        reader, writer = await connect(node.config.server.grpc_port)
        try:
            return await until_closed(reader)
        finally:
            writer.close()

    asyncio.run(scenario())  # closed within the bound (the gRPC default handshake deadline is 120 s)
