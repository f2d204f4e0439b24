"""Torch dtypes and V2 datatypes, numpy arrays and torch tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from dlinfer.api import ModelLoadError, TensorSpec

#: V2 datatype -> name of the torch dtype (strings, so this module imports no torch).
V2_TO_TORCH = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
TORCH_TO_V2 = {v: k for k, v in V2_TO_TORCH.items()}


def v2_of(dtype: Any, what: str) -> str:
    """The V2 datatype of a torch dtype; bfloat16 is served as FP32 (numpy has no bfloat16)."""
    name = str(dtype).removeprefix("torch.")
    if name == "bfloat16":
        return "FP32"
    if name not in TORCH_TO_V2:
        raise ModelLoadError(f"{what} has torch dtype {name}, which the V2 protocol cannot carry")
    return TORCH_TO_V2[name]


def torch_dtype(datatype: str, what: str) -> Any:
    import torch

    if datatype not in V2_TO_TORCH:
        raise ModelLoadError(f"{what} is {datatype}, which torch models cannot take (no torch dtype)")
    return getattr(torch, V2_TO_TORCH[datatype])


def to_tensor(arr: np.ndarray, device: Any) -> Any:
    """A torch tensor on ``device`` sharing ``arr``'s memory where it can (read-only arrays are copied)."""
    import torch

    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr)
    return t if device.type == "cpu" else t.to(device, non_blocking=True)


def to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def example_array(spec: TensorSpec, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Random data for ``spec`` with the batch (first dynamic) dimension set to ``batch``.

    Other dynamic dimensions cannot be guessed and are an error naming the tensor.
    """
    shape = []
    for i, d in enumerate(spec.shape):
        if d != -1:
            shape.append(d)
        elif i == 0:
            shape.append(batch)
        else:
            raise ModelLoadError(
                f"input {spec.name!r} has shape {list(spec.shape)}: dimension {i} is dynamic; "
                "state a fixed size for it in config.toml [[input]] to build sample inputs"
            )
    from dlinfer.api import numpy_dtype

    dtype = numpy_dtype(spec.datatype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    # Small non-negative integers: safe as indices into embeddings and as counts.
    return rng.integers(0, 8, shape).astype(dtype)
