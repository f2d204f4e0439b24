"""A served model's configuration in the model configuration extension's form.

One builder for both protocols: HTTP answers this dict as JSON (the shape Triton's
``/config`` endpoint has, so tritonclient and perf_analyzer-style tools read it), gRPC
parses it into the extension's ``ModelConfig`` message.
"""

from __future__ import annotations

from typing import Any

from ..repository import ServedModel


def extension_config(model: ServedModel) -> dict[str, Any]:
    """Name, platform, version policy, batching, tensors and instances of ``model``.

    Tensors are the ones clients send and receive (after processors), with the batch
    dimension left out of ``dims`` when the model batches, as the extension defines them.
    """
    meta = model.metadata()
    cfg = model.config
    batching = model.max_batch_size > 0
    policy = cfg.version_policy
    if policy.all:
        versions: dict[str, Any] = {"all": {}}
    elif policy.specific:
        versions = {"specific": {"versions": list(policy.specific)}}
    else:
        versions = {"latest": {"num_versions": policy.latest or 1}}
    doc: dict[str, Any] = {
        "name": model.name,
        "platform": meta["platform"],
        "backend": cfg.format,
        "version_policy": versions,
        "max_batch_size": model.max_batch_size,
    }
    for kind, key in (("inputs", "input"), ("outputs", "output")):
        doc[key] = [
            {
                "name": t["name"],
                "data_type": f"TYPE_{'STRING' if t['datatype'] == 'BYTES' else t['datatype']}",
                "dims": t["shape"][1:] if batching and t["shape"] else t["shape"],
            }
            for t in meta[kind]
        ]
    kind = "KIND_GPU" if meta["platform"] == "tensorrt_plan" else "KIND_CPU"
    doc["instance_group"] = [{"name": model.name, "kind": kind, "count": cfg.instance_count}]
    if cfg.dynamic_batching is not None and batching:
        doc["dynamic_batching"] = {
            "preferred_batch_size": list(cfg.dynamic_batching.preferred_batch_size),
            "max_queue_delay_microseconds": cfg.dynamic_batching.max_queue_delay_us,
        }
    return doc
