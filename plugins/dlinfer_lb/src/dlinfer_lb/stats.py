"""The statistics extension over a fleet: the nodes' per-version statistics, summed.

Every count and cumulative time adds up across nodes (each node counts only the
requests it served); ``last_inference`` is the latest; ``batch_stats`` add up per
batch size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


def _add(into: dict[str, Any], other: dict[str, Any], keys: Iterable[str]) -> None:
    for key in keys:
        a, b = into.setdefault(key, {"count": 0, "ns": 0}), other.get(key) or {}
        a["count"] = int(a["count"]) + int(b.get("count", 0))
        a["ns"] = int(a["ns"]) + int(b.get("ns", 0))


def merge(per_node: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One ``model_stats`` list from each node's, summed per model name and version."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    batches: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for stats in per_node:
        for doc in stats:
            key = (str(doc.get("name", "")), str(doc.get("version", "")))
            row = out.setdefault(
                key,
                {"name": key[0], "version": key[1], "last_inference": 0, "inference_count": 0,
                 "execution_count": 0, "inference_stats": {}},
            )  # fmt: skip
            row["last_inference"] = max(int(row["last_inference"]), int(doc.get("last_inference", 0)))
            row["inference_count"] += int(doc.get("inference_count", 0))
            row["execution_count"] += int(doc.get("execution_count", 0))
            _add(row["inference_stats"], doc.get("inference_stats") or {}, DURATIONS)
            for b in doc.get("batch_stats") or []:
                size = int(b.get("batch_size", 0))
                _add(batches.setdefault(key, {}).setdefault(size, {"batch_size": size}), b, BATCH_DURATIONS)
    for key, row in out.items():
        row["batch_stats"] = [batches[key][size] for size in sorted(batches.get(key, {}))]
    return sorted(out.values(), key=lambda r: (r["name"], int(r["version"] or 0)))
