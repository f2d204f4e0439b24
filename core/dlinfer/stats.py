"""Per-model statistics in the shape of the V2 statistics extension.

Each :class:`ServedModel` keeps one :class:`ModelStats` as a scheduler
observer (called on the event loop, so plain counters suffice); the HTTP
``/v2/models/.../stats`` endpoints and the gRPC ``ModelStatistics`` method
report it. Prometheus ``/metrics`` carries the same facts as time series.
"""

from __future__ import annotations

import time
from typing import Any

import attrs


@attrs.define
class Duration:
    """A count and the cumulative time of what it counts, in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9) * count

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@attrs.define
class ModelStats:
    """Request outcomes, queue and compute time, and executions per batch size of one model version."""

    success: Duration = attrs.field(factory=Duration)
    fail: Duration = attrs.field(factory=Duration)
    queue: Duration = attrs.field(factory=Duration)
    compute_infer: Duration = attrs.field(factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    #: Milliseconds since the epoch of the last successful request; 0: none yet.
    last_inference: int = 0
    #: Executions per batch size (rows in the framework call) and their compute time.
    batches: dict[int, Duration] = attrs.field(factory=dict)

    def queued(self, queue_s: float) -> None:
        self.queue.add(queue_s)

    def executed(self, requests: int, samples: int, compute_s: float) -> None:
        self.execution_count += 1
        self.inference_count += samples
        self.compute_infer.add(compute_s, count=requests)  # each request of the batch waited for the call
        self.batches.setdefault(samples, Duration()).add(compute_s)

    def finished(self, failure: str | None, total_s: float) -> None:
        if failure is None:
            self.success.add(total_s)
            self.last_inference = time.time_ns() // 1_000_000
        else:
            self.fail.add(total_s)

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        """The extension's JSON object for this model version."""
        zero = Duration().to_json()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": zero,
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": zero,
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": zero, "compute_infer": d.to_json(), "compute_output": zero}
                for size, d in sorted(self.batches.items())
            ],
        }
