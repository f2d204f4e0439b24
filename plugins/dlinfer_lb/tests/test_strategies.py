"""The balancing strategies on their own: the algorithms' defining properties."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from dlinfer.api import Plugins, node_config_from_dict
from dlinfer_lb.membership import Node
from dlinfer_lb.settings import LbSettings, policy_for
from dlinfer_lb.strategies import FAILURE, SUCCESS, ConsistentHash, LeastOutstanding, PeakEwma, SmoothWeightedRoundRobin


def _policy(**lb):
    return policy_for(LbSettings(**lb), "m")


def _nodes(*weights: int) -> list[Node]:
    return [Node(f"http://n{i}", w) for i, w in enumerate(weights)]


class _Request:
    def __init__(self, key: str | None) -> None:
        self.headers = {"x-dlinfer-hash-key": key} if key is not None else {}


def test_swrr_is_smooth_and_starts_from_the_weights() -> None:
    a, b, c = _nodes(5, 1, 1)
    s = SmoothWeightedRoundRobin(_policy())
    seq = [s.pick("m", [a, b, c], None).url[-1] for _ in range(7)]
    assert seq == ["0", "0", "1", "0", "2", "0", "0"]  # nginx's a a b a c a a


def test_swrr_lowers_effective_weight_on_failure_and_recovers_on_success() -> None:
    a, b = _nodes(4, 4)
    s = SmoothWeightedRoundRobin(_policy())
    for _ in range(3):
        s.observe(a, FAILURE, 0.0)
    picks = Counter(s.pick("m", [a, b], None).url for _ in range(50))
    assert picks[a.url] == 10 and picks[b.url] == 40  # effective weight 1 against 4
    for _ in range(3):
        s.observe(a, SUCCESS, 0.0)
    picks = Counter(s.pick("m", [a, b], None).url for _ in range(80))
    assert picks[a.url] == picks[b.url] == 40


def test_least_outstanding_picks_the_idlest() -> None:
    a, b, c = _nodes(1, 1, 1)
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert LeastOutstanding(_policy()).pick("m", [a, b, c], None) is b


class _Clock:
    """A controlled time source for a strategy's statistics."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _p2c(clock: _Clock) -> PeakEwma:
    s = PeakEwma(_policy(ewma_decay_s=10.0))
    s.clock = clock
    return s


def test_p2c_prefers_lower_latency() -> None:
    fast, slow = _nodes(1, 1)
    s = PeakEwma(_policy())
    s.observe(fast, SUCCESS, 0.002)
    s.observe(slow, SUCCESS, 0.050)
    assert all(s.pick("m", [fast, slow], None) is fast for _ in range(20))
    slow.outstanding = 0
    fast.outstanding = 40  # 0.002 x 41 > 0.050: load outweighs latency
    assert s.pick("m", [fast, slow], None) is slow


def test_p2c_failures_leave_the_latency_estimate_alone() -> None:
    clock = _Clock()
    a, b = _nodes(1, 1)
    s = _p2c(clock)
    s.observe(a, SUCCESS, 0.002)
    s.observe(b, SUCCESS, 0.004)
    s.observe(b, FAILURE, 0.0001)  # a refused connection does not make a node look fast ...
    s.observe(b, FAILURE, 30.0)  # ... and a dead node's deadline is not its latency
    assert s.estimate(b, [a, b], clock.now) == pytest.approx(0.004)
    s.observe(a, FAILURE, 0.0001)
    assert s.estimate(a, [a, b], clock.now) == pytest.approx(0.002)


def test_p2c_node_admitted_again_starts_as_a_typical_node() -> None:
    clock = _Clock()
    a, b, c = nodes = _nodes(1, 1, 1)
    s = _p2c(clock)
    for node, latency in ((a, 0.002), (b, 0.004), (c, 0.500)):
        s.observe(node, SUCCESS, latency)
    assert Counter(s.pick("m", nodes, None).url for _ in range(300))[c.url] == 0
    # Ejected, then back: its old answers are forgotten and it counts at the median of the others.
    c.ejected_until = clock.now = clock.now + 5
    assert s.estimate(c, nodes, clock.now) == pytest.approx(0.003)
    picks = Counter(s.pick("m", nodes, None).url for _ in range(300))
    assert picks[c.url] > 60, picks  # it beats b (a third of the pairs); a beats it
    s.observe(c, SUCCESS, 0.001)
    assert s.estimate(c, nodes, clock.now) == pytest.approx(0.001)
    # The same after its active checks failed and passed again.
    s.observe(c, SUCCESS, 0.500)
    c.healthy_since = clock.now = clock.now + 1
    assert s.estimate(c, nodes, clock.now) == pytest.approx(0.003)


def test_p2c_old_answers_fade_towards_the_median() -> None:
    clock = _Clock()
    a, b, c = nodes = _nodes(1, 1, 1)
    s = _p2c(clock)
    for node, latency in ((a, 0.002), (b, 0.002), (c, 0.502)):
        s.observe(node, SUCCESS, latency)
    clock.now += 30  # three time constants: the slow answer weighs e^-3, 5%
    assert s.estimate(c, nodes, clock.now) == pytest.approx(0.002 + 0.5 * math.exp(-3))
    a.outstanding = 1
    s.observe(a, SUCCESS, 0.002)  # the fast node keeps answering; the slow one gets nothing
    assert s.pick("m", [a, c], None) is a
    clock.now += 30  # a minute on, the slow node beats one with a request in flight
    s.observe(a, SUCCESS, 0.002)
    assert s.pick("m", [a, c], None) is c
    assert s.estimate(c, [a, c], clock.now) == pytest.approx(0.002 + 0.5 * math.exp(-6))


def test_swrr_node_admitted_again_starts_from_its_weight() -> None:
    clock = _Clock()
    a, b = _nodes(8, 8)
    s = SmoothWeightedRoundRobin(_policy())
    s.clock = clock
    for _ in range(4):
        s.observe(a, FAILURE, 0.0)  # 8 -> 6 -> 4 -> 2 -> 1
    assert Counter(s.pick("m", [a, b], None).url for _ in range(90))[a.url] == 10
    a.healthy_since = clock.now = clock.now + 1  # failed its checks, then passed them again
    picks = Counter(s.pick("m", [a, b], None).url for _ in range(80))
    assert picks[a.url] == picks[b.url] == 40
    # Short of a restart, successes win the weight back a quarter at a time.
    for _ in range(4):
        s.observe(a, FAILURE, 0.0)
    for _ in range(4):
        s.observe(a, SUCCESS, 0.0)
    assert Counter(s.pick("m", [a, b], None).url for _ in range(80))[a.url] == 40


def test_consistent_hash_is_sticky_and_bounded() -> None:
    nodes = _nodes(1, 1, 1, 1)
    s = ConsistentHash(_policy())
    keys = [f"user-{i}" for i in range(200)]
    first = {k: s.pick("m", nodes, _Request(k)).url for k in keys}
    assert first == {k: s.pick("m", nodes, _Request(k)).url for k in keys}
    assert len(set(first.values())) == 4
    # Removing a node moves only the keys it owned.
    moved = [k for k in keys if s.pick("m", nodes[:3], _Request(k)).url != first[k]]
    assert moved and all(first[k] == nodes[3].url for k in moved)
    # A hot node over the bound spills its keys to the next node on the ring.
    owner = next(n for n in nodes if n.url == first["user-0"])
    owner.outstanding = 10
    assert s.pick("m", nodes, _Request("user-0")) is not owner
    owner.outstanding = 0
    assert s.pick("m", nodes, _Request(None)) in nodes


def _config(lb: dict, disable=("dlinfer.server.v2_http", "dlinfer.server.v2_grpc")):
    from dlinfer.api import BUILTIN_PLUGINS

    data = {"plugins": {"disable": [d for d in disable if d in BUILTIN_PLUGINS], "lb": lb}}
    return node_config_from_dict(data, source="gateway.toml")


@pytest.mark.parametrize(
    ("lb", "message"),
    [
        ({"strategy": 3}, "gateway.toml: plugins.lb.strategy: expected a string, got 3 (int)"),
        ({"nodes": ["http://a:1", "ftp://b"]}, "gateway.toml: plugins.lb.nodes[1].url: expected an http://"),
        ({"nodes": ["http://a:99999"]}, "gateway.toml: plugins.lb.nodes[0].url: expected a port from 1 to 65535"),
        ({"nodes": [{"url": "http://a:1", "grpc": "a"}]}, "plugins.lb.nodes[0].grpc: expected host:port"),
        ({"health": {"interval_s": "2s"}}, "gateway.toml: plugins.lb.health.interval_s: expected a number"),
        ({"outlier": {"max_ejection_percent": 150}}, "plugins.lb.outlier.max_ejection_percent: expected an integer"),
        ({"models": {"r": {"deadline_ms": 0}}}, "gateway.toml: plugins.lb.models.r.deadline_ms: expected an integer"),
        ({"retries": 2}, "gateway.toml: plugins.lb.retries: unknown key"),
        ({"register": {"gateways": ["http://gw:8000"]}}, "plugins.lb.register.token: required"),
    ],
)
def test_bad_settings_name_file_and_key(lb, message) -> None:
    from dlinfer.api import ConfigError

    with pytest.raises(ConfigError) as info:
        Plugins(_config(lb)).load()
    assert message in str(info.value)


def test_gateway_mode_keeps_the_local_frontends_off_by_itself() -> None:
    """No ``plugins.disable`` needed: the gateway marks the data plane as forwarding before the
    built-in V2 frontend adds its routes, so the infer route is the gateway's own."""
    from dlinfer.server import create_app
    from dlinfer_lb.gateway import infer

    app = create_app(_config({"enabled": True}, disable=()))
    handlers = {r.handler for r in app.router.routes() if r.resource and r.resource.canonical.endswith("/infer")}
    assert handlers == {infer}


def test_unknown_strategy_is_refused_at_start() -> None:
    from dlinfer.api import ConfigError
    from dlinfer.server import create_app

    config = _config({"enabled": True, "models": {"r": {"strategy": "random"}}})
    with pytest.raises(ConfigError, match=r"plugins.lb.models.r.strategy: unknown strategy 'random'; installed: "):
        create_app(config)


def test_without_lb_settings_a_node_is_unchanged() -> None:
    plugins = Plugins(node_config_from_dict({}, source="node.toml")).load()
    assert plugins.infos["lb"].status == "loaded"
    assert {"swrr", "least_outstanding", "p2c", "consistent_hash"} <= set(plugins.registry("dlinfer_balancers"))
    from dlinfer.server import create_app

    app = create_app(plugins.config, plugins)
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert "/v2/-/nodes" not in paths and "/v2/models/{model}/infer" in paths


def test_example_gateway_config_is_valid() -> None:
    from pathlib import Path

    from dlinfer.config import load_node_config
    from dlinfer.server import create_app
    from dlinfer_lb.gateway import GATEWAY

    path = Path(__file__).resolve().parents[3] / "examples" / "gateway.toml"
    app = create_app(load_node_config(path))
    gateway = app[GATEWAY]
    assert policy_for(gateway.settings, "classifier").strategy == "swrr"
    assert policy_for(gateway.settings, "other").strategy == "p2c"
    assert [n.url for n in gateway.settings.node_entries()] == ["http://127.0.0.1:8101", "http://127.0.0.1:8201"]
