"""The statistics extension on a gateway: every node's statistics, summed."""

from __future__ import annotations

import requests
import tritonclient.grpc as tgrpc

from dlinfer_lb.stats import merge


def _stats(url: str, path: str = "/v2/models/linear/stats") -> dict:
    r = requests.get(url + path, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_gateway_sums_the_nodes_statistics(cluster, start_gateway, helpers) -> None:
    nodes = [{"url": n.url, "grpc": f"127.0.0.1:{n.config.server.grpc_port}"} for n in cluster.nodes]
    gw = start_gateway(strategy="swrr", nodes=nodes)
    before = _stats(gw.url)["model_stats"][0]["inference_stats"]["success"]["count"]
    assert helpers.send(gw.url, "linear", 30).count(200) == 30

    doc = _stats(gw.url)
    assert doc["nodes"] == sorted(cluster.urls) and doc["nodes_failed"] == {}
    (row,) = doc["model_stats"]
    assert (row["name"], row["version"]) == ("linear", "1")
    assert row["inference_stats"]["success"]["count"] == before + 30
    per_node = [_stats(url)["model_stats"][0] for url in cluster.urls]
    assert sum(1 for r in per_node if r["inference_count"]) >= 2  # the traffic was spread
    assert row["inference_count"] == sum(r["inference_count"] for r in per_node)
    for part in ("success", "queue", "compute_infer"):
        summed = {k: sum(r["inference_stats"][part][k] for r in per_node) for k in ("count", "ns")}
        assert row["inference_stats"][part] == summed
    assert row["last_inference"] == max(r["last_inference"] for r in per_node) > 0

    only12 = _stats(gw.url, "/v2/models/only12/stats")
    assert len(only12["nodes"]) == 2  # the model lives on two of the three nodes
    assert {r["name"] for r in _stats(gw.url, "/v2/models/stats")["model_stats"]} >= {"linear", "only12"}
    assert requests.get(f"{gw.url}/v2/models/nowhere/stats", timeout=10).status_code == 404

    client = tgrpc.InferenceServerClient(f"127.0.0.1:{gw.config.server.grpc_port}")
    (over_grpc,) = client.get_inference_statistics("linear", as_json=True)["model_stats"]
    assert int(over_grpc["inference_stats"]["success"]["count"]) == row["inference_stats"]["success"]["count"]
    assert int(over_grpc["inference_count"]) == row["inference_count"]


def test_merge_adds_batch_sizes_and_keeps_the_latest_inference() -> None:
    def node(last: int, sizes: dict[int, int]) -> list[dict]:
        batch = [{"batch_size": s, "compute_infer": {"count": n, "ns": 10 * n}} for s, n in sizes.items()]
        stats = {"success": {"count": sum(sizes.values()), "ns": 5}}
        return [{"name": "m", "version": "2", "last_inference": last, "inference_stats": stats, "batch_stats": batch}]

    (row,) = merge([node(100, {1: 3, 4: 1}), node(250, {4: 2, 8: 1}), []])
    assert row["last_inference"] == 250
    assert row["inference_stats"]["success"] == {"count": 7, "ns": 10}
    assert row["inference_stats"]["fail"] == {"count": 0, "ns": 0}
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in row["batch_stats"]] == [(1, 3), (4, 3), (8, 1)]
