"""A served model's configuration in the model configuration extension's form.

One builder for both protocols: HTTP answers this dict as JSON (the shape Triton's
``/config`` endpoint has, so tritonclient and perf_analyzer-style tools read it), gRPC
parses it into the extension's ``ModelConfig`` message.
"""

from __future__ import annotations

from typing import Any

from ..model import TensorConfig
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
    for kind, key, stated in (("inputs", "input", cfg.input), ("outputs", "output", cfg.output)):
        by_name = {t.name: t for t in stated}
        doc[key] = [
            _tensor(t["name"], t["datatype"], t["shape"][1:] if batching and t["shape"] else t["shape"], by_name)
            for t in meta[kind]
        ]
    on_gpu = meta["platform"] == "tensorrt_plan" or cfg.device.startswith("cuda")
    group: dict[str, Any] = {
        "name": model.name,
        "kind": "KIND_GPU" if on_gpu else "KIND_CPU",
        "count": cfg.instance_count,
    }
    if cfg.device.startswith("cuda:") and cfg.device[5:].isdigit():
        group["gpus"] = [int(cfg.device.removeprefix("cuda:"))]
    doc["instance_group"] = [group]
    if cfg.dynamic_batching is not None and batching:
        doc["dynamic_batching"] = {
            "preferred_batch_size": list(cfg.dynamic_batching.preferred_batch_size),
            "max_queue_delay_microseconds": cfg.dynamic_batching.max_queue_delay_us,
        }
        queue: dict[str, Any] = {}
        if cfg.max_queue_size:
            queue["max_queue_size"] = cfg.max_queue_size
        if cfg.timeout_ms:
            # A request's own timeout parameter always overrides the model's in dlinfer.
            queue.update(default_timeout_microseconds=cfg.timeout_ms * 1000, allow_timeout_override=True)
        if queue:
            doc["dynamic_batching"]["default_queue_policy"] = queue
    if cfg.parameters:
        doc["parameters"] = {
            k: {"string_value": v if isinstance(v, str) else str(v)} for k, v in cfg.parameters.items()
        }
    return doc


def _tensor(name: str, datatype: str, dims: list[int], stated: dict[str, TensorConfig]) -> dict[str, Any]:
    """One input or output, with what its model config adds: reshape, image format, labels file."""
    doc: dict[str, Any] = {
        "name": name,
        "data_type": f"TYPE_{'STRING' if datatype == 'BYTES' else datatype}",
        "dims": dims,
    }
    t = stated.get(name)
    if t is not None:
        if t.reshape is not None:
            doc["reshape"] = {"shape": list(t.reshape)}
        if t.format:
            doc["format"] = f"FORMAT_{t.format}"
        if t.labels_file:
            doc["label_filename"] = t.labels_file
    return doc
