"""The request path's machinery: event loop choice, body reading, malloc tuning, instance workers."""

from __future__ import annotations

import asyncio
import platform
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton

from dlinfer import ConfigError
from dlinfer.config import load_node_config
from dlinfer.errors import DeadlineExceeded
from dlinfer.scheduler import DirectScheduler
from dlinfer.server.loop import loop_factory
from dlinfer.server.memory import tune_malloc
from dlinfer.testing import RunningNode, node_config, onnx_identity_model, write_model


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "id", 1, {"model.onnx": onnx_identity_model("FP32", ["batch", -1])})
    with RunningNode(node_config(root, limits={"max_body_bytes": 16 << 20})) as n:
        yield n


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_event_loop_choice(tmp_path: Path, choice: str) -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    with RunningNode(node_config(tmp_path, server={"event_loop": choice})) as n:
        assert n.call(loop_module).startswith(choice)
        assert requests.get(f"{n.url}/v2/health/ready").status_code == 200


def test_auto_picks_uvloop_where_installed() -> None:
    pytest.importorskip("uvloop")
    factory = loop_factory("auto")
    assert factory is not None and type(factory()).__module__.startswith("uvloop")
    assert loop_factory("asyncio") is None


def test_bad_event_loop_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text('[server]\nevent_loop = "trio"\n')
    with pytest.raises(ConfigError, match=r"server\.event_loop.*'auto', 'uvloop', 'asyncio'.*trio"):
        load_node_config(f)


def test_large_binary_tensor_arrives_whole(node: RunningNode) -> None:
    """A 4 MB tensor comes in many socket reads; it is reassembled exactly."""
    x = np.random.default_rng(0).standard_normal((2, 500_000)).astype(np.float32)
    client = triton.InferenceServerClient(node.url.removeprefix("http://"))
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer("id", [inp], outputs=[triton.InferRequestedOutput("y", binary_data=True)])
    np.testing.assert_array_equal(result.as_numpy("y"), x)


def test_chunked_body_is_read(node: RunningNode) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    doc = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}]}'
    r = requests.post(f"{node.url}/v2/models/id/infer", data=iter([doc[:20], doc[20:]]))  # no Content-Length
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == x.ravel().tolist()


def test_body_shorter_than_content_length_is_refused(node: RunningNode) -> None:
    host, port = node.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/id/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"inputs": []}'
        )
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    # aiohttp treats the half-closed connection as gone and cancels the handler: no reply,
    # no 500, nothing queued, and the node keeps serving.
    assert not reply.startswith(b"HTTP/1.1 500"), reply
    if reply:
        assert reply.startswith(b"HTTP/1.1 400"), reply
    assert requests.get(f"{node.url}/v2/health/ready").status_code == 200


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_thresholds_are_raised_on_glibc() -> None:
    assert tune_malloc() is True


# -------------------------------------------------------------- instance workers


def test_worker_survives_a_model_that_raises_anything() -> None:
    """StopIteration or SystemExit from a model fails that request; the instance keeps serving."""
    calls = iter([StopIteration(), SystemExit(3), None])

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        exc = next(calls)
        if exc is not None:
            raise exc
        return {"y": inputs["x"] * 2}

    async def main() -> list[object]:
        sched = DirectScheduler("m", run, instance_count=1, max_queue_size=4)
        try:
            out: list[object] = []
            for _ in range(3):
                try:
                    out.append((await sched.submit({"x": np.ones(2, np.float32)}))["y"].tolist())
                except RuntimeError as exc:
                    out.append(str(exc))
            return out
        finally:
            sched.close()

    assert asyncio.run(main()) == ["StopIteration: ", "SystemExit: 3", [2.0, 2.0]]


def test_expired_and_withdrawn_calls_never_run() -> None:
    """Behind a busy instance: a call whose deadline passes and one whose caller goes
    away are both skipped by the worker; the next live call runs."""
    gate = threading.Event()
    ran: list[float] = []

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ran.append(float(inputs["x"][0]))
        if inputs["x"][0] == 0:
            gate.wait(10)
        return {"y": inputs["x"]}

    async def main() -> tuple[str, bool, list[float]]:
        loop = asyncio.get_running_loop()
        sched = DirectScheduler("m", run, instance_count=1, max_queue_size=8)
        try:
            first = asyncio.ensure_future(sched.submit({"x": np.array([0.0])}))
            while not ran:
                await asyncio.sleep(0.01)
            expiring = asyncio.ensure_future(sched.submit({"x": np.array([1.0])}, deadline=time.monotonic() + 0.05))
            leaving = asyncio.ensure_future(sched.submit({"x": np.array([2.0])}))
            live = asyncio.ensure_future(sched.submit({"x": np.array([3.0])}))
            await asyncio.sleep(0.1)
            assert sched.queued == 3 - expiring.done()
            leaving.cancel()
            try:
                await expiring
                expired = "answered"
            except DeadlineExceeded as exc:
                expired = str(exc)
            loop.call_soon(gate.set)
            await first
            await live
            return expired, leaving.cancelled(), list(ran)
        finally:
            sched.close()

    expired, cancelled, ran_inputs = asyncio.run(main())
    assert "expired while queued" in expired
    assert cancelled
    assert ran_inputs == [0.0, 3.0]


def test_batches_form_on_every_free_instance() -> None:
    """With two instances and a cap of two rows, a backlog is split over both
    instances as they free up, and every request gets its own rows back in order."""
    from dlinfer.scheduler import DynamicBatcher

    gate = threading.Event()
    calls: list[list[float]] = []
    running = 0
    most = 0
    lock = threading.Lock()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal running, most
        with lock:
            calls.append(inputs["x"][:, 0].tolist())
            running += 1
            most = max(most, running)
        gate.wait(10)
        with lock:
            running -= 1
        return {"y": inputs["x"] * 10}

    async def main() -> list[list[float]]:
        # The delay makes the second instance wait for a full batch of two (deterministic batches).
        sched = DynamicBatcher(
            "m", run, instance_count=2, max_queue_size=8, max_batch_size=2, max_queue_delay_us=200_000
        )
        try:
            first = asyncio.ensure_future(sched.submit({"x": np.array([[1.0]])}))
            while not calls:
                await asyncio.sleep(0.01)
            rest = [asyncio.ensure_future(sched.submit({"x": np.array([[v]])})) for v in (2.0, 3.0, 4.0)]
            while len(calls) < 2:
                await asyncio.sleep(0.01)
            gate.set()
            results = await asyncio.gather(first, *rest)
            return [r["y"][:, 0].tolist() for r in results]
        finally:
            await sched.aclose()
            sched.close()

    assert asyncio.run(main()) == [[10.0], [20.0], [30.0], [40.0]]
    assert calls == [[1.0], [2.0, 3.0], [4.0]]
    assert most == 2
