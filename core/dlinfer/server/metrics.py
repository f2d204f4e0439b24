"""Built-in plugin: Prometheus metrics at ``GET /metrics``.

Names follow Triton's ``nv_inference_*`` metrics where the meaning is the same,
with the ``dlinfer_`` prefix, per model and version. Each node has its own
registry (no process-global state), holding the per-model metrics below plus
the process, platform and garbage-collector collectors of prometheus_client.

The plugin watches models through the ``dlinfer_model_loaded`` and
``dlinfer_model_unloaded`` hooks and attaches an observer to each model's
scheduler, which calls it on the event loop: recording costs a few counter
increments per request and no hook call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from ..plugins import hookimpl

if TYPE_CHECKING:
    from ..plugins import Plugins
    from ..repository import ModelRepository, ServedModel

del GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR  # the global registry's; each node builds its own

LABELS = ("model", "version")
#: Latency buckets from 0.5 ms to 10 s: CPU models answer in milliseconds, overloaded queues in seconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class NodeMetrics:
    """Every metric of one node, registered in the node's own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.success = Counter(
            "dlinfer_inference_request_success", "Requests answered successfully", LABELS, registry=r
        )
        self.failure = Counter(
            "dlinfer_inference_request_failure",
            "Requests that failed, by reason (invalid, overloaded, deadline, canceled, unavailable, backend, other)",
            (*LABELS, "reason"),
            registry=r,
        )
        self.inference_count = Counter(
            "dlinfer_inference_count", "Inferences performed: batch rows, counted per request row", LABELS, registry=r
        )
        self.exec_count = Counter(
            "dlinfer_inference_exec_count",
            "Model executions (framework calls); below inference_count when batching merges requests",
            LABELS,
            registry=r,
        )
        self.request_us = Counter(
            "dlinfer_inference_request_duration_us",
            "Cumulative end-to-end request time in the scheduler and model, microseconds",
            LABELS,
            registry=r,
        )
        self.queue_us = Counter(
            "dlinfer_inference_queue_duration_us", "Cumulative time requests waited in the queue", LABELS, registry=r
        )
        self.compute_us = Counter(
            "dlinfer_inference_compute_infer_duration_us",
            "Cumulative model execution time, counted once per execution",
            LABELS,
            registry=r,
        )
        self.request_s = Histogram(
            "dlinfer_inference_request_duration_seconds",
            "Request time in the scheduler and model",
            LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_s = Histogram(
            "dlinfer_inference_queue_duration_seconds",
            "Time a request waited for an instance or a batch",
            LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.compute_s = Histogram(
            "dlinfer_inference_compute_duration_seconds",
            "Time of one model execution",
            LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dlinfer_inference_batch_size", "Rows per model execution", LABELS, buckets=BATCH_BUCKETS, registry=r
        )
        self.pending = Gauge(
            "dlinfer_inference_pending_request_count",
            "Requests waiting in the queue for an instance or a batch, and admitted ones still being read",
            LABELS,
            registry=r,
        )
        self.inflight = Gauge(
            "dlinfer_inference_inflight_request_count",
            "Requests admitted and not yet answered (queued or running)",
            LABELS,
            registry=r,
        )
        self._reasons: dict[tuple[str, str], set[str]] = {}

    def watch(self, model: ServedModel) -> None:
        """Start recording ``model``: attach an observer to its scheduler."""
        key = (model.name, str(model.version))
        self.pending.labels(*key).set_function(lambda: model.scheduler.queued)
        self.inflight.labels(*key).set_function(lambda: model.inflight)
        self._reasons.setdefault(key, set())  # kept across a reload under the same version number
        model.scheduler.observers.append(ModelObserver(self, key))

    def forget(self, name: str, version: int) -> None:
        """Drop the series of an unloaded model version."""
        key = (name, str(version))
        for metric in (
            self.success,
            self.inference_count,
            self.exec_count,
            self.request_us,
            self.queue_us,
            self.compute_us,
            self.request_s,
            self.queue_s,
            self.compute_s,
            self.batch_size,
            self.pending,
            self.inflight,
        ):
            try:
                metric.remove(*key)
            except KeyError:
                pass
        for reason in self._reasons.pop(key, ()):
            self.failure.remove(*key, reason)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelObserver:
    """The scheduler observer of one model version; holds its labelled children."""

    def __init__(self, metrics: NodeMetrics, key: tuple[str, str]) -> None:
        self._m = metrics
        self._key = key
        self._success = metrics.success.labels(*key)
        self._inferences = metrics.inference_count.labels(*key)
        self._execs = metrics.exec_count.labels(*key)
        self._request_us = metrics.request_us.labels(*key)
        self._queue_us = metrics.queue_us.labels(*key)
        self._compute_us = metrics.compute_us.labels(*key)
        self._request_s = metrics.request_s.labels(*key)
        self._queue_s = metrics.queue_s.labels(*key)
        self._compute_s = metrics.compute_s.labels(*key)
        self._batch = metrics.batch_size.labels(*key)

    def queued(self, queue_s: float) -> None:
        self._queue_us.inc(queue_s * 1e6)
        self._queue_s.observe(queue_s)

    def executed(self, requests: int, samples: int, compute_s: float) -> None:
        self._execs.inc()
        self._inferences.inc(samples)
        self._compute_us.inc(compute_s * 1e6)
        self._compute_s.observe(compute_s)
        self._batch.observe(samples)

    def finished(self, failure: str | None, total_s: float) -> None:
        self._request_us.inc(total_s * 1e6)
        self._request_s.observe(total_s)
        if failure is None:
            self._success.inc()
        else:
            self._m._reasons.setdefault(self._key, set()).add(failure)
            self._m.failure.labels(*self._key, failure).inc()


#: Triton's name for each of the series (``[metrics] triton_names``), and the attribute holding ours.
TRITON_COUNTERS = (
    ("nv_inference_request_success", "success", "Number of successful inference requests"),
    ("nv_inference_count", "inference_count", "Number of inferences performed (batch rows)"),
    ("nv_inference_exec_count", "exec_count", "Number of model executions"),
    ("nv_inference_request_duration_us", "request_us", "Cumulative request duration in microseconds"),
    ("nv_inference_queue_duration_us", "queue_us", "Cumulative queue duration in microseconds"),
    ("nv_inference_compute_infer_duration_us", "compute_us", "Cumulative compute duration in microseconds"),
)
#: dlinfer's failure reasons as Triton's.
TRITON_REASONS = {"overloaded": "REJECTED", "canceled": "CANCELED", "backend": "BACKEND"}


class TritonNames(Collector):
    """The same per-model series under Triton's ``nv_inference_*`` names, read from ours at each
    scrape (nothing more to count per request). Untyped, so the sample names are exactly Triton's
    (this exposition format would add ``_total`` to a counter's)."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        for name, attr, doc in TRITON_COUNTERS:
            family = UnknownMetricFamily(name, doc, labels=LABELS)
            for sample in _samples(getattr(self.m, attr), "_total"):
                family.add_metric([sample.labels["model"], sample.labels["version"]], sample.value)
            yield family
        failures: dict[tuple[str, str, str], float] = {}
        for sample in _samples(self.m.failure, "_total"):
            key = (
                sample.labels["model"],
                sample.labels["version"],
                TRITON_REASONS.get(sample.labels["reason"], "OTHER"),
            )
            failures[key] = failures.get(key, 0.0) + sample.value
        family = UnknownMetricFamily(
            "nv_inference_request_failure", "Number of failed inference requests", labels=(*LABELS, "reason")
        )
        for key, value in failures.items():
            family.add_metric(list(key), value)
        yield family
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count", "Requests waiting to be executed", labels=LABELS
        )
        for sample in _samples(self.m.pending, ""):
            pending.add_metric([sample.labels["model"], sample.labels["version"]], sample.value)
        yield pending


def _samples(metric: Collector, suffix: str) -> Iterator[Sample]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                yield sample


class MetricsPlugin:
    """The ``metrics`` built-in: one :class:`NodeMetrics` per node and the ``/metrics`` route."""

    def __init__(self, triton_names: bool = False) -> None:
        self.metrics = NodeMetrics()
        if triton_names:
            self.metrics.registry.register(TritonNames(self.metrics))

    @hookimpl
    def dlinfer_routes(self, app: web.Application, repository: ModelRepository) -> None:
        async def metrics(request: web.Request) -> web.Response:
            body = self.metrics.exposition()
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/metrics", metrics)

    @hookimpl
    def dlinfer_openapi(self, spec: dict, app: web.Application) -> None:
        text = {"text/plain": {"schema": {"type": "string"}}}
        spec["paths"]["/metrics"] = {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics: requests, failures, queue and compute time, batch sizes per model",
                "tags": ["meta"],
                "responses": {"200": {"description": "Prometheus text exposition format 0.0.4", "content": text}},
            }
        }

    @hookimpl
    def dlinfer_model_loaded(self, model: ServedModel) -> None:
        self.metrics.watch(model)

    @hookimpl
    def dlinfer_model_unloaded(self, name: str, version: int) -> None:
        self.metrics.forget(name, version)


def make_plugin(plugins: Plugins) -> MetricsPlugin:
    return MetricsPlugin(triton_names=plugins.config.metrics.triton_names)
