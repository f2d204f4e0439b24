"""Outlier ejection, the retry budget and consistent hashing through a gateway; the CLI on a bad table."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

from dlinfer_lb.health import OutlierDetector
from dlinfer_lb.membership import Membership
from dlinfer_lb.proxy import RetryBudget
from dlinfer_lb.settings import LbSettings, NodeEntry, OutlierSettings


def _membership(n: int) -> Membership:
    m = Membership(LbSettings(), None, lambda node: None, lambda node: None)
    m._set_source("static", [NodeEntry(f"http://n{i}:8000") for i in range(n)])
    for node in m.nodes.values():
        node.healthy = True
    return m


def test_ejection_backs_off_exponentially_and_respects_max_percent() -> None:
    m = _membership(3)
    a, b, _c = m.nodes.values()
    ejected = []
    settings = OutlierSettings(consecutive_failures=2, base_ejection_s=10, max_ejection_s=25, max_ejection_percent=50)
    detector = OutlierDetector(m, settings, ejected.append)
    detector.failure(a, "refused")
    assert not a.ejected(time.monotonic())  # one failure is not an outlier
    detector.failure(a, "refused")
    now = time.monotonic()
    assert ejected == [a] and 9 < a.ejected_until - now <= 10
    # A second node would be 2 of 3 ejected, over 50%: it keeps taking traffic.
    detector.failure(b, "refused")
    detector.failure(b, "refused")
    assert not b.ejected(time.monotonic()) and ejected == [a]
    # Back and failing again: twice as long, then capped at max_ejection_s.
    a.ejected_until = 0.0
    detector.failure(a, "refused")
    detector.failure(a, "refused")
    assert 19 < a.ejected_until - time.monotonic() <= 20
    a.ejected_until = 0.0
    detector.failure(a, "refused")
    detector.failure(a, "refused")
    assert 24 < a.ejected_until - time.monotonic() <= 25
    # A success resets the consecutive count.
    a.ejected_until = 0.0
    detector.failure(a, "refused")
    detector.success(a)
    detector.failure(a, "refused")
    assert not a.ejected(time.monotonic())


def test_retry_budget_caps_extra_load() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0)
    for _ in range(50):
        budget.request()
    allowed = sum(budget.try_retry() for _ in range(30))
    assert allowed == 10  # 20% of 50
    floor = RetryBudget(ratio=0.0, min_per_s=1, window_s=10)
    assert sum(floor.try_retry() for _ in range(30)) == 10  # 1 per second over the window


def test_consistent_hash_keeps_a_key_on_one_node(cluster, start_gateway, helpers) -> None:
    gw = start_gateway(strategy="consistent_hash", nodes=cluster.urls, hash_header="x-session")
    homes = []
    for key in ("alice", "bob", "carol", "dave", "erin", "frank"):
        before = cluster.counts("linear")
        assert helpers.send(gw.url, "linear", 12, concurrency=1, headers={"X-Session": key}).count(200) == 12
        got = [a - b for a, b in zip(cluster.counts("linear"), before, strict=True)]
        assert sorted(got) == [0, 0, 12], (key, got)  # every request of a key on the same node
        homes.append(got.index(12))
    assert len(Counter(homes)) >= 2  # and different keys on different nodes


def test_cli_refuses_a_bad_lb_table(tmp_path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[plugins]\ndisable = ["dlinfer.server.v2_http", "dlinfer.server.v2_grpc"]\n'
        '[plugins.lb]\nenabled = true\n[plugins.lb.outlier]\nmax_ejection_percent = "half"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert f"{config}: plugins.lb.outlier.max_ejection_percent: expected an integer" in proc.stderr
