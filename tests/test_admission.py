"""Admission under load through a real node: the expected-wait bound and requests still being read.

The slow model is the ``scheduler_plugins/slow.py`` backend (it sleeps per call).
Tests wait on observable state (calls reaching the model, queue depth), never on timings.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests

from dlinfer.testing import RunningNode, node_config, wait_for, write_model
from dlinfer.testing import metric_value as metric

from .test_scheduler import PLUGINS_DIR, SLOW, body, calls, node_plugins, post


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("models")
    record = tmp_path_factory.mktemp("calls")
    for name, wait_ms in (("bounded", 1500), ("unbounded", 0)):
        write_model(
            root,
            name,
            1,
            SLOW,
            config={
                "instance_count": 1,
                "max_queue_wait_ms": wait_ms,
                "parameters": {"delay_s": 1.0, "record": str(record / f"{name}.log")},
            },
        )
    write_model(
        root,
        "one_slot",
        1,
        SLOW,
        config={"instance_count": 1, "max_queue_size": 1, "parameters": {"delay_s": 0.01}},
    )
    cfg = node_config(root, plugins={"plugins_dir": str(PLUGINS_DIR)})
    with RunningNode(cfg, node_plugins(cfg)) as n:
        n.record = record  # type: ignore[attr-defined]
        yield n


def _background(fn) -> tuple[threading.Thread, list[requests.Response]]:
    out: list[requests.Response] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


@pytest.mark.parametrize(("model", "third"), [("bounded", 429), ("unbounded", 200)])
def test_a_request_that_would_wait_too_long_is_refused_with_retry_after(
    node: RunningNode, model: str, third: int
) -> None:
    x = np.ones((1, 2), dtype=np.float32)
    assert post(node.url, model, body(x)).status_code == 200  # the model's service time is now known
    before = len(calls(node, model))
    running, r1 = _background(lambda: post(node.url, model, body(x)))
    wait_for(lambda: len(calls(node, model)) == before + 1, "the first request to reach the model")
    # Nothing queued yet: the second is admitted whatever its wait (one service time).
    queued, r2 = _background(lambda: post(node.url, model, body(x)))
    wait_for(lambda: metric(node.url, "dlinfer_inference_pending_request_count", model) == 1, "a queued request")
    # The third would wait for the running call and the queued one: ~2 s, over the 1.5 s bound.
    resp = post(node.url, model, body(x))
    assert resp.status_code == third, resp.text
    if third == 429:
        assert "would wait about" in resp.json()["error"]
        assert int(resp.headers["Retry-After"]) >= 2
    running.join()
    queued.join()
    assert r1[0].status_code == 200 and r2[0].status_code == 200


async def _send_head(port: int, model: str, doc: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection and send an infer request's headers and all but the last byte of its body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(doc)}\r\n\r\n"
    )
    writer.write(head.encode() + doc[:-1])
    await writer.drain()
    return reader, writer


async def _status(reader: asyncio.StreamReader) -> int:
    line = await asyncio.wait_for(reader.readline(), 30)
    return int(line.split()[1])


def test_requests_still_being_read_count_against_the_queue(node: RunningNode) -> None:
    """With room for one queued request, a second whose body is still arriving keeps the slot:
    a third is refused at once instead of all three being read and decoded."""
    port = node.config.server.http_port
    doc = orjson.dumps(body(np.ones((1, 2), dtype=np.float32)))

    async def scenario() -> tuple[int, int]:
        r1, w1 = await _send_head(port, "one_slot", doc)
        # Admitted once its headers are read; it counts as queued from then on.
        await asyncio.to_thread(
            wait_for,
            lambda: metric(node.url, "dlinfer_inference_pending_request_count", "one_slot") == 1,
            "the first request to be admitted",
        )
        r2, w2 = await _send_head(port, "one_slot", doc)
        second = await _status(r2)  # answered before its body is complete
        w1.write(doc[-1:])
        first = await _status(r1)
        for w in (w1, w2):
            w.close()
        return first, second

    first, second = asyncio.run(scenario())
    assert (first, second) == (200, 429)


def test_admission_settings_are_validated(tmp_path: Path) -> None:
    from dlinfer.config import node_config_from_dict
    from dlinfer.errors import ConfigError

    with pytest.raises(ConfigError, match="max_queue_wait_ms"):
        node_config_from_dict({"limits": {"max_queue_wait_ms": -1}}, source="node.toml")


async def _expect(port: int, model: str, length: int) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send an infer request's headers alone with ``Expect: 100-continue``; the server's first answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30), reader, writer


def test_expect_100_continue_is_refused_before_the_body_is_sent(node: RunningNode) -> None:
    """A client that asks before sending its body gets the refusal instead of ``100 Continue``
    (and the connection closes), or the go-ahead when there is room."""
    port = node.config.server.http_port
    doc = orjson.dumps(body(np.ones((1, 2), dtype=np.float32)))

    async def scenario() -> tuple[bytes, bytes, bytes, bytes, int]:
        r1, w1 = await _send_head(port, "one_slot", doc)
        await asyncio.to_thread(
            wait_for,
            lambda: metric(node.url, "dlinfer_inference_pending_request_count", "one_slot") == 1,
            "the first request to be admitted",
        )
        full, r2, w2 = await _expect(port, "one_slot", len(doc))
        closed = await asyncio.wait_for(r2.read(), 30)  # the error body, then end of stream
        w1.write(doc[-1:])
        assert await _status(r1) == 200
        too_big, _, w3 = await _expect(port, "one_slot", node.config.limits.max_body_bytes + 1)
        go, r4, w4 = await _expect(port, "one_slot", len(doc))
        w4.write(doc)
        final = await _status(r4)
        for w in (w1, w2, w3, w4):
            w.close()
        return full, closed, too_big, go, final

    full, closed, too_big, go, final = asyncio.run(scenario())
    assert full.startswith(b"HTTP/1.1 429") and b"Connection: close" in full and b"Retry-After" in full
    assert b"queue" in closed
    assert too_big.startswith(b"HTTP/1.1 413")
    assert go.startswith(b"HTTP/1.1 100 Continue")
    assert final == 200


def test_an_aiohttp_client_using_expect_gets_the_refusal(node: RunningNode) -> None:
    """aiohttp's ``expect100=True`` client reads the final answer when no ``100 Continue`` comes."""
    import aiohttp

    port = node.config.server.http_port
    doc = orjson.dumps(body(np.ones((1, 2), dtype=np.float32)))

    async def scenario() -> tuple[int, int, int]:
        r1, w1 = await _send_head(port, "one_slot", doc)
        await asyncio.to_thread(
            wait_for,
            lambda: metric(node.url, "dlinfer_inference_pending_request_count", "one_slot") == 1,
            "the first request to be admitted",
        )
        url = f"{node.url}/v2/models/one_slot/infer"
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(url, data=doc, expect100=True) as resp:
                refused = resp.status
                await resp.read()
            w1.write(doc[-1:])
            first = await _status(r1)
            async with session.post(url, data=doc, expect100=True) as resp:
                admitted = resp.status
                await resp.read()
        w1.close()
        return refused, first, admitted

    assert asyncio.run(scenario()) == (429, 200, 200)
