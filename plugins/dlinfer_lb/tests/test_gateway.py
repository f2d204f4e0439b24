"""A gateway in front of three real nodes: routing, strategies, V2 compatibility."""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import numpy as np
import orjson
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def test_swrr_distribution_matches_weights(cluster, start_gateway, helpers) -> None:
    weights = [5, 3, 2]
    gw = start_gateway(
        strategy="swrr", nodes=[{"url": u, "weight": w} for u, w in zip(cluster.urls, weights, strict=True)]
    )
    before = cluster.counts("linear")
    statuses = helpers.send(gw.url, "linear", 1000, concurrency=8)
    after = cluster.counts("linear")
    assert statuses.count(200) == 1000
    got = [a - b for a, b in zip(after, before, strict=True)]
    for count, w in zip(got, weights, strict=True):
        assert abs(count - 1000 * w / sum(weights)) <= 20, got  # within ±2% of the 1,000 requests


def test_model_aware_routing(cluster, start_gateway, helpers) -> None:
    gw = start_gateway(strategy="least_outstanding", nodes=cluster.urls)
    before = cluster.counts("only12")
    assert helpers.send(gw.url, "only12", 200, concurrency=8).count(200) == 200
    got = [a - b for a, b in zip(cluster.counts("only12"), before, strict=True)]
    assert got[2] == 0 and got[0] > 0 and got[1] > 0 and sum(got) == 200, got

    ready = requests.get(f"{gw.url}/v2/models/only12/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    missing = requests.post(f"{gw.url}/v2/models/nowhere/infer", json=helpers.X, timeout=5)
    assert missing.status_code == 404 and "not in the repository of any node" in missing.json()["error"]

    index = requests.post(f"{gw.url}/v2/repository/index", json={"ready": True}, timeout=5).json()
    assert [(r["name"], r["version"], r["state"]) for r in index] == [
        ("identity", "1", "READY"),
        ("linear", "1", "READY"),
        ("only12", "1", "READY"),
        ("p2c", "1", "READY"),
    ]
    nodes = helpers.nodes_status(gw.url)
    assert sorted(nodes[cluster.urls[2]]["models"]) == ["identity", "linear", "p2c"]


def test_clients_cannot_tell_gateway_from_node(cluster, start_gateway) -> None:
    gw = start_gateway(strategy="p2c", nodes=cluster.urls)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    results = {}
    for name, url in (("node", cluster.urls[0]), ("gateway", gw.url)):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("linear")
        meta = client.get_model_metadata("linear")
        assert meta["inputs"][0]["name"] == "x"
        inp = triton.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = triton.InferRequestedOutput("probs", binary_data=True)
        results[name] = client.infer("linear", [inp], outputs=[out]).as_numpy("probs")
        # A node's error comes back through the gateway with the node's own message.
        bad = triton.InferInput("x", [1, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 5), np.float32))
        try:
            client.infer("linear", [bad])
        except InferenceServerException as exc:
            results[name + "-error"] = (exc.status(), exc.message())
        client.close()
    np.testing.assert_array_equal(results["node"], results["gateway"])
    assert results["node-error"] == results["gateway-error"]
    assert results["gateway-error"][0] == "400"
    server = requests.get(f"{gw.url}/v2", timeout=5).json()
    assert server["name"] == "dlinfer" and "binary_tensor_data" in server["extensions"]
    assert 'dlinfer_gateway_upstream_requests_total{model="linear"' in requests.get(f"{gw.url}/metrics", timeout=5).text


def test_p2c_ewma_sends_less_to_a_slow_node(cluster, start_gateway, helpers) -> None:
    gw = start_gateway(strategy="swrr", nodes=cluster.urls, models={"p2c": {"strategy": "p2c"}})
    before = cluster.counts("p2c")
    assert helpers.send(gw.url, "p2c", 300, concurrency=4).count(200) == 300
    fast1, fast2, slow = (a - b for a, b in zip(cluster.counts("p2c"), before, strict=True))
    # Round robin would give each node 100; the node 50 ms slower must get far less.
    assert slow < 0.5 * min(fast1, fast2), (fast1, fast2, slow)


def test_large_answers_are_streamed_through(cluster, start_gateway) -> None:
    gw = start_gateway(nodes=cluster.urls)
    x = np.random.default_rng(0).standard_normal((1, 400_000)).astype(np.float32)  # 1.6 MB each way
    client = triton.InferenceServerClient(gw.url.removeprefix("http://"))
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer("identity", [inp], outputs=[triton.InferRequestedOutput("y", binary_data=True)])
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    client.close()


def test_grpc_clients_cannot_tell_gateway_from_node(cluster, start_gateway) -> None:
    import tritonclient.grpc as tgrpc

    nodes = [{"url": n.url, "grpc": f"127.0.0.1:{n.config.server.grpc_port}"} for n in cluster.nodes]
    gw = start_gateway(strategy="swrr", nodes=nodes)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    seen = {}
    for name, target in (("node", nodes[0]["grpc"]), ("gateway", f"127.0.0.1:{gw.config.server.grpc_port}")):
        client = tgrpc.InferenceServerClient(target)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("linear")
        assert client.get_model_metadata("linear").inputs[0].name == "x"
        seen[name + "-config"] = client.get_model_config("linear", as_json=True)
        index = client.get_model_repository_index()
        assert {(m.name, m.state) for m in index.models} >= {("linear", "READY"), ("only12", "READY")}
        inp = tgrpc.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        before = cluster.counts("linear")
        seen[name] = [client.infer("linear", [inp]).as_numpy("probs") for _ in range(30)]
        seen[name + "-spread"] = [a - b for a, b in zip(cluster.counts("linear"), before, strict=True)]
        bad = tgrpc.InferInput("x", [1, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 5), np.float32))
        for model, inputs in (("linear", [bad]), ("nowhere", [inp])):
            try:
                client.infer(model, inputs)
            except InferenceServerException as exc:
                seen.setdefault(name + "-errors", []).append(exc.status())
        client.close()
    np.testing.assert_array_equal(seen["node"][0], seen["gateway"][0])
    assert seen["gateway-config"] == seen["node-config"] and seen["node-config"]["config"]["name"] == "linear"
    assert seen["gateway-spread"] == [10, 10, 10]  # swrr 1:1:1 over gRPC too
    assert seen["gateway-errors"][0] == seen["node-errors"][0] == "StatusCode.INVALID_ARGUMENT"
    assert seen["gateway-errors"][1] == "StatusCode.NOT_FOUND"


def test_version_aware_routing(start_gateway, helpers, tmp_path) -> None:
    import contextlib

    from dlinfer.api import Plugins
    from dlinfer.api.testing import RunningNode, node_config, onnx_linear_model, write_model

    with contextlib.ExitStack() as stack:
        nodes, recorders = [], []
        for name, versions in (("a", (1, 2)), ("b", (1,))):
            repo = tmp_path / name
            for v in versions:
                write_model(
                    repo, "vm", v, {"model.onnx": onnx_linear_model(seed=v)}, config={"version_policy": {"all": True}}
                )
            config = node_config(repo)
            plugins = Plugins(config).load()
            recorders.append(helpers.Recorder())
            plugins.register(recorders[-1], "recorder")
            nodes.append(stack.enter_context(RunningNode(config, plugins)))
        gw = start_gateway(strategy="swrr", nodes=[n.url for n in nodes])
        url = f"{gw.url}/v2/models/vm/versions"
        for _ in range(10):
            r = requests.post(f"{url}/2/infer", json=helpers.X, timeout=5)
            assert r.status_code == 200 and r.json()["model_version"] == "2"
        assert [r.snapshot()["vm"] for r in recorders] == [10, 0]  # only node a has version 2
        # "The latest" is the newest version on any node, as from one node: node a again.
        assert helpers.send(gw.url, "vm", 20).count(200) == 20
        assert [r.snapshot()["vm"] for r in recorders] == [30, 0]
        for _ in range(6):
            assert requests.post(f"{url}/1/infer", json=helpers.X, timeout=5).status_code == 200
        assert [r.snapshot()["vm"] for r in recorders] == [33, 3]  # version 1: both nodes, in turn
        r = requests.post(f"{url}/3/infer", json=helpers.X, timeout=5)
        assert r.status_code == 404 and "version 3 is not in the repository of any node" in r.json()["error"]
        assert requests.get(f"{url}/1/ready", timeout=5).json()["ready"] is True

        # Model control fans out to every node; the index shows the result at once.
        assert requests.post(f"{gw.url}/v2/repository/models/vm/unload", timeout=10).status_code == 200
        index = requests.post(f"{gw.url}/v2/repository/index", timeout=5).json()
        assert {r["state"] for r in index if r["name"] == "vm"} == {"UNAVAILABLE"}
        r = requests.post(f"{gw.url}/v2/models/vm/infer", json=helpers.X, timeout=5)
        assert r.status_code == 503 and "not ready on any node" in r.json()["error"]
        assert requests.post(f"{gw.url}/v2/repository/models/vm/load", timeout=30).status_code == 200
        assert requests.post(f"{gw.url}/v2/models/vm/infer", json=helpers.X, timeout=5).status_code == 200
        r = requests.post(f"{gw.url}/v2/repository/models/nothere/load", timeout=10)
        assert r.status_code == 404 and r.json()["error"].startswith("node http://127.0.0.1:")


def test_compressed_requests_through_the_gateway(cluster, start_gateway, helpers) -> None:
    """gzip/deflate request bodies work through the gateway as on a node, and a body that does
    not match its Content-Encoding is a 400 that leaves no broken pooled connection behind."""
    gw = start_gateway(nodes=[cluster.urls[0]])  # one node: a stale connection would have no other to retry on
    x = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    client = triton.InferenceServerClient(gw.url.removeprefix("http://"))
    for binary in (True, False):
        inp = triton.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outputs = [triton.InferRequestedOutput("probs", binary_data=binary)]
        plain = client.infer("linear", [inp], outputs=outputs).as_numpy("probs")
        for algorithm in ("gzip", "deflate"):
            for _ in range(3):
                result = client.infer(
                    "linear",
                    [inp],
                    outputs=outputs,
                    request_compression_algorithm=algorithm,
                    response_compression_algorithm=algorithm,
                )
                np.testing.assert_array_equal(result.as_numpy("probs"), plain)
    client.close()

    async def mixed() -> list[tuple[int, str]]:
        url = f"{gw.url}/v2/models/linear/infer"
        body = orjson.dumps(helpers.X)
        seen = []
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.post(url, data=body, headers={"Content-Encoding": "gzip"}) as r:
                    seen.append((r.status, (await r.json())["error"]))
                for data, headers in ((body, {}), (gzip.compress(body), {"Content-Encoding": "gzip"})):
                    async with session.post(url, data=data, headers=headers) as r:
                        seen.append((r.status, await r.text()))
        return seen

    seen = asyncio.run(mixed())
    assert [s for s, _ in seen] == [400, 200, 200] * 5, seen
    assert "Content-Encoding" in seen[0][1]
    assert helpers.send(gw.url, "linear", 50, concurrency=4).count(200) == 50
