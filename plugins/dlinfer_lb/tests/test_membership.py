"""Node file hot reload and self-registration against real nodes and gateways."""

from __future__ import annotations

import os

import requests

from dlinfer.api.testing import RunningNode, node_config


def _write_nodes(path, urls, stamp) -> None:
    path.write_text("nodes = [" + ", ".join(f'"{u}"' for u in urls) + "]\n")
    os.utime(path, ns=(stamp, stamp))  # a distinct mtime even within the clock's resolution


def test_node_file_edit_applied_without_restart(cluster, start_gateway, helpers, tmp_path) -> None:
    node_file = tmp_path / "nodes.toml"
    _write_nodes(node_file, cluster.urls[:1], 1_000_000_000)
    gw = start_gateway(strategy="swrr", node_file="nodes.toml", node_file_poll_s=0.1)
    before = cluster.counts("linear")
    assert helpers.send(gw.url, "linear", 30).count(200) == 30
    assert [a - b for a, b in zip(cluster.counts("linear"), before, strict=True)] == [30, 0, 0]

    _write_nodes(node_file, cluster.urls[:2], 2_000_000_000)
    helpers.wait_for(
        lambda: helpers.nodes_status(gw.url).get(cluster.urls[1], {}).get("admitted") is True,
        what="the node added to the file to take traffic",
    )
    before = cluster.counts("linear")
    assert helpers.send(gw.url, "linear", 60).count(200) == 60
    assert [a - b for a, b in zip(cluster.counts("linear"), before, strict=True)] == [30, 30, 0]

    # A broken edit is reported and the previous list kept.
    node_file.write_text("nodes = [{url = 'ftp://nowhere'}]\n")
    os.utime(node_file, ns=(3_000_000_000, 3_000_000_000))
    helpers.wait_for(
        lambda: requests.get(f"{gw.url}/v2/-/nodes", timeout=5).json()["node_file"]["error"] != "",
        what="the bad node file to be reported",
    )
    doc = requests.get(f"{gw.url}/v2/-/nodes", timeout=5).json()
    assert "nodes[0].url" in doc["node_file"]["error"] and "ftp://nowhere" in doc["node_file"]["error"]
    assert sorted(n["url"] for n in doc["nodes"]) == sorted(cluster.urls[:2])

    _write_nodes(node_file, cluster.urls[1:2], 4_000_000_000)
    helpers.wait_for(lambda: list(helpers.nodes_status(gw.url)) == [cluster.urls[1]], what="node 1 to be dropped")


def test_registration_needs_the_token(cluster, start_gateway, helpers) -> None:
    gw = start_gateway(registration_token="s3cret")
    url = cluster.urls[0]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        r = requests.post(f"{gw.url}/v2/-/nodes", json={"url": url, "ttl_s": 30}, headers=headers, timeout=5)
        assert r.status_code == 401 and "registration token" in r.json()["error"]
    assert helpers.nodes_status(gw.url) == {}
    assert requests.get(f"{gw.url}/v2/health/ready", timeout=5).status_code == 503

    auth = {"Authorization": "Bearer s3cret"}
    bad = requests.post(f"{gw.url}/v2/-/nodes", json={"url": "not a url"}, headers=auth, timeout=5)
    assert bad.status_code == 400 and "base address" in bad.json()["error"]
    r = requests.post(f"{gw.url}/v2/-/nodes", json={"url": url, "ttl_s": 30}, headers=auth, timeout=5)
    assert r.status_code == 200 and r.json()["admitted"] is True
    assert requests.get(f"{gw.url}/v2/health/ready", timeout=5).status_code == 200
    assert helpers.send(gw.url, "linear", 10).count(200) == 10
    assert helpers.nodes_status(gw.url)[url]["sources"] == ["registered"]

    r = requests.post(f"{gw.url}/v2/-/nodes", json={"url": url, "ttl_s": 0}, headers=auth, timeout=5)
    assert r.status_code == 200 and r.json()["registered"] is False
    assert helpers.nodes_status(gw.url) == {}
    r = requests.post(f"{gw.url}/v2/models/linear/infer", json=helpers.X, timeout=5)
    assert r.status_code == 404  # no node left that has it


def test_registration_expires_without_heartbeat(cluster, start_gateway, helpers) -> None:
    gw = start_gateway(registration_token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    r = requests.post(f"{gw.url}/v2/-/nodes", json={"url": cluster.urls[1], "ttl_s": 0.3}, headers=auth, timeout=5)
    assert r.status_code == 200
    helpers.wait_for(lambda: helpers.nodes_status(gw.url) == {}, what="the registration to expire")


def test_node_registers_itself_with_heartbeats(start_gateway, helpers, tmp_path) -> None:
    from dlinfer.api.testing import onnx_linear_model, write_model

    gw = start_gateway(registration_token="s3cret")
    repo = tmp_path / "models"
    write_model(repo, "linear", 1, {"model.onnx": onnx_linear_model()})
    register = {"gateways": [gw.url], "token": "s3cret", "interval_s": 0.1, "ttl_s": 2.0, "weight": 3}
    config = node_config(repo, plugins={"lb": {"register": register}})
    with RunningNode(config) as node:
        helpers.wait_for(
            lambda: helpers.nodes_status(gw.url).get(node.url, {}).get("admitted") is True,
            what="the node to register and be admitted",
        )
        status = helpers.nodes_status(gw.url)[node.url]
        assert status["weight"] == 3 and status["grpc"] == f"127.0.0.1:{config.server.grpc_port}"
        assert helpers.send(gw.url, "linear", 10).count(200) == 10
    # Shutting down deregisters at once, not after the TTL.
    assert helpers.nodes_status(gw.url) == {}
