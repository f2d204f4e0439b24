"""Caffe's test-time input transform (``transform_param``), built into the converted graph.

Caffe models expect their inputs prepared the way the training data layer
prepared them: BGR channel order, a centre crop, a mean image or per-channel
mean subtracted, then a scale. With ``[parameters.transform]`` in a model's
config.toml the node does this itself, inside the ONNX graph (so ONNX Runtime
runs it, batched, without a Python pass over the pixels), and clients send
images as they have them, e.g. ``[N, H, W, 3]`` UINT8 RGB::

    [parameters.transform]
    layout = "NHWC"          # or "NCHW" (default)
    datatype = "UINT8"       # or "FP32" (default)
    channel_swap = true      # clients send RGB, the model wants BGR
    image_size = [256, 256]  # size of the images sent, when cropping (default: the mean file's)
    crop_size = 227          # centre crop, as Caffe's TEST phase crops
    mean_file = "mean.binaryproto"   # in the version folder; or
    mean_value = [104.0, 117.0, 123.0]
    scale = 1.0

The order is Caffe's: crop, subtract the mean (the mean image cropped at the
same offsets), multiply by ``scale``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np

from dlinfer.api import ModelLoadError

from .reader import read_mean_file

_KEYS = {"layout", "datatype", "channel_swap", "image_size", "crop_size", "mean_file", "mean_value", "scale"}


@attrs.frozen
class Transform:
    layout: str = "NCHW"
    datatype: str = "FP32"
    channel_swap: bool = False
    image_size: tuple[int, int] | None = None
    crop_size: int = 0
    mean: np.ndarray | None = attrs.field(default=None, eq=False)
    scale: float = 1.0


def _bad(key: str, want: str, got: Any) -> ModelLoadError:
    return ModelLoadError(f"parameters.transform.{key} must be {want}, got {got!r}")


def parse_transform(table: Any, folder: Path) -> Transform:
    """Validate ``[parameters.transform]``; read the mean file from the version folder."""
    if not isinstance(table, dict):
        raise ModelLoadError(f"parameters.transform must be a table, got {table!r}")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ModelLoadError(f"parameters.transform: unknown keys {unknown}; known: {sorted(_KEYS)}")
    layout = table.get("layout", "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise _bad("layout", '"NCHW" or "NHWC"', layout)
    datatype = table.get("datatype", "FP32")
    if datatype not in ("FP32", "UINT8"):
        raise _bad("datatype", '"FP32" or "UINT8"', datatype)
    swap = table.get("channel_swap", False)
    if not isinstance(swap, bool):
        raise _bad("channel_swap", "true or false", swap)
    crop = table.get("crop_size", 0)
    if not isinstance(crop, int) or crop < 0:
        raise _bad("crop_size", "a non-negative integer", crop)
    scale = table.get("scale", 1.0)
    if not isinstance(scale, int | float):
        raise _bad("scale", "a number", scale)
    size = table.get("image_size")
    if size is not None and (
        not isinstance(size, list) or len(size) != 2 or not all(isinstance(d, int) and d > 0 for d in size)
    ):
        raise _bad("image_size", "[height, width]", size)
    mean = None
    if "mean_file" in table and "mean_value" in table:
        raise ModelLoadError("parameters.transform: give mean_file or mean_value, not both (as in Caffe)")
    if "mean_file" in table:
        name = table["mean_file"]
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise _bad("mean_file", "a file name in the version folder", name)
        if not (folder / name).is_file():
            raise ModelLoadError(f"parameters.transform.mean_file: version folder {folder.name!r} has no {name}")
        mean = read_mean_file(folder / name)
        size = size or list(mean.shape[1:])
    elif "mean_value" in table:
        values = table["mean_value"]
        if not isinstance(values, list) or not values or not all(isinstance(v, int | float) for v in values):
            raise _bad("mean_value", "a list of numbers", values)
        mean = np.asarray(values, np.float32)
    return Transform(layout, datatype, swap, tuple(size) if size else None, crop, mean, float(scale))


def prepend_transform(model: Any, t: Transform) -> Any:
    """Put ``t`` in front of the model's single input; the input keeps its name."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if len(graph.input) != 1:
        raise ModelLoadError("parameters.transform needs a network with exactly one input")
    inp = graph.input[0]
    name = inp.name
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ModelLoadError("parameters.transform needs a 4-D image input (N, C, H, W)")
    _, c, h, w = dims
    if t.crop_size and (h, w) != (t.crop_size, t.crop_size):
        raise ModelLoadError(f"parameters.transform.crop_size {t.crop_size} differs from the network's input {h}x{w}")
    img_h, img_w = t.image_size or (h, w)
    if not t.crop_size and (img_h, img_w) != (h, w):
        raise ModelLoadError(f"image_size {[img_h, img_w]} differs from the network's input {h}x{w}; set crop_size")
    if t.crop_size and (img_h < h or img_w < w):
        raise ModelLoadError(f"image_size {[img_h, img_w]} is smaller than crop_size {t.crop_size}")
    off_h, off_w = (img_h - h) // 2, (img_w - w) // 2  # Caffe's TEST-phase centre crop

    nodes, inits = [], []

    def const(value: Any, base: str, dtype: Any = np.float32) -> str:
        n = f"{name}/transform/{base}"
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
        return n

    x = name

    def add(op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = f"{name}/transform/{base}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    if t.datatype == "UINT8":
        x = add("Cast", [x], "float", to=TensorProto.FLOAT)
    if t.layout == "NHWC":
        x = add("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    if t.channel_swap:
        lowest = np.iinfo(np.int64).min
        x = add(
            "Slice",
            [
                x,
                const([-1], "swap_start", np.int64),
                const([lowest], "swap_end", np.int64),
                const([1], "swap_axis", np.int64),
                const([-1], "swap_step", np.int64),
            ],
            "swapped",
        )
    if (img_h, img_w) != (h, w):
        x = add(
            "Slice",
            [
                x,
                const([off_h, off_w], "crop_start", np.int64),
                const([off_h + h, off_w + w], "crop_end", np.int64),
                const([2, 3], "crop_axes", np.int64),
            ],
            "cropped",
        )
    if t.mean is not None:
        mean = t.mean
        if mean.ndim == 3:
            if mean.shape != (c, img_h, img_w):
                raise ModelLoadError(f"the mean file has shape {list(mean.shape)}, the images {[c, img_h, img_w]}")
            mean = mean[:, off_h : off_h + h, off_w : off_w + w]
        elif mean.size in (1, c):
            mean = mean.reshape(-1, 1, 1)
        else:
            raise ModelLoadError(f"mean_value has {mean.size} values for {c} channels")
        x = add("Sub", [x, const(mean, "mean")], "centred")
    if t.scale != 1.0:
        x = add("Mul", [x, const(np.float32(t.scale), "scale")], "scaled")
    if x == name:
        return model
    inner = f"{name}/transformed"
    nodes[-1].output[0] = inner
    for node in graph.node:
        for i, v in enumerate(node.input):
            if v == name:
                node.input[i] = inner
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    graph.initializer.extend(inits)
    dims = ["batch", img_h, img_w, c] if t.layout == "NHWC" else ["batch", c, img_h, img_w]
    elem = TensorProto.UINT8 if t.datatype == "UINT8" else TensorProto.FLOAT
    graph.input[0].CopyFrom(helper.make_tensor_value_info(name, elem, dims))
    return model
