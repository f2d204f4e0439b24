"""The classification extension: an output's top classes as strings instead of its scores.

A client asks with the requested output's ``classification`` parameter (tritonclient's
``InferRequestedOutput(name, class_count=K)``); the output then holds, per batch row, the K
highest values as BYTES ``"<value>:<index>"``, or ``"<value>:<index>:<label>"`` when the
output has a labels file: the strings Triton answers, so clients that parse them keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInput, ModelLoadError
from .model import ModelConfig, TensorSpec

#: The requested-output parameter that asks for classes.
PARAMETER = "classification"

#: Scores that can be ranked: every numeric datatype (not BOOL or BYTES).
_RANKED = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")


def read_labels(config: ModelConfig, model_dir: Path) -> dict[str, list[str]]:
    """Each output's labels (line N is class N), read at load so a missing file fails the load."""
    labels = {}
    for out in config.output:
        if not out.labels_file:
            continue
        path = model_dir / out.labels_file
        try:
            if path.is_symlink() or not path.resolve().is_relative_to(model_dir.resolve()):
                raise ModelLoadError(
                    f"labels file {out.labels_file!r} of output {out.name!r} must be in the model's folder"
                )
            labels[out.name] = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"labels file {out.labels_file!r} of output {out.name!r}: {exc}") from exc
    return labels


def class_count(value: Any, output: TensorSpec) -> int:
    """The requested K, checked before the model runs."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"output {output.name!r}: parameter {PARAMETER!r} must be a positive integer, got {value!r}")
    if output.datatype not in _RANKED:
        raise InvalidInput(
            f"output {output.name!r}: classification needs numeric scores, the output is {output.datatype}"
        )
    return value


def top_classes(scores: np.ndarray, k: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    """The K best classes of each batch row (of the whole tensor when the model does not batch),
    highest first, ties in index order; shape ``[rows, K]`` (``[K]`` without batching)."""
    rows = scores.reshape(scores.shape[0] if batched else 1, -1)
    k = min(k, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    integer = rows.dtype.kind in "iu"
    result = np.empty(order.shape, dtype=object)
    for r, row in enumerate(order):
        for c, idx in enumerate(row.tolist()):
            value = rows[r, idx]
            text = f"{int(value)}:{idx}" if integer else f"{float(value):f}:{idx}"
            if labels is not None and idx < len(labels):
                text += f":{labels[idx]}"
            result[r, c] = text.encode()
    return result if batched else result[0]
