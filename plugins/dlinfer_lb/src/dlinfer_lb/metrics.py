"""Gateway metrics in Prometheus format.

They go into the node's registry of core's ``/metrics`` built-in when it is
loaded, so a gateway has one ``/metrics`` like any node; otherwise into a
registry of their own that the gateway serves at ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Gateway latency buckets, 0.25 ms to 30 s.
BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """Per node and model: attempts, failures, retries, ejections, latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = self.registry = registry
        self.requests = Counter(
            "dlinfer_gateway_requests",
            "Client requests answered by the gateway, by status code",
            ("model", "code"),
            registry=r,
        )
        self.upstream = Counter(
            "dlinfer_gateway_upstream_requests", "Attempts sent to a node", ("model", "node"), registry=r
        )
        self.failures = Counter(
            "dlinfer_gateway_upstream_failures",
            "Attempts that failed at a node (connection error, 502/503/504, 429)",
            ("model", "node", "reason"),
            registry=r,
        )
        self.retries = Counter("dlinfer_gateway_retries", "Attempts retried on another node", ("model",), registry=r)
        self.budget_exhausted = Counter(
            "dlinfer_gateway_retry_budget_exhausted", "Retries refused by the retry budget", ("model",), registry=r
        )
        self.ejections = Counter("dlinfer_gateway_ejections", "Passive ejections of a node", ("node",), registry=r)
        self.latency = Histogram(
            "dlinfer_gateway_upstream_duration_seconds",
            "Time from sending an attempt to a node to its response head",
            ("model", "node"),
            buckets=BUCKETS,
            registry=r,
        )
        self.healthy = Gauge("dlinfer_gateway_node_admitted", "1 when the node takes traffic", ("node",), registry=r)
        self.outstanding = Gauge(
            "dlinfer_gateway_node_outstanding", "Requests in flight on the node", ("node",), registry=r
        )

    def forget(self, node: str) -> None:
        """Drop the per-node gauges of a node that left."""
        for gauge in (self.healthy, self.outstanding):
            try:
                gauge.remove(node)
            except KeyError:
                pass
