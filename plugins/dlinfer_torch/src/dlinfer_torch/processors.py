"""Pre- and post-processors a model config names: ``image``, ``topk`` and ``argmax``.

They replace the per-model ``preprocess``/``postprocess`` scripts of older servers
with declarative settings under the model's ``[parameters.<processor>]`` table.
They work on numpy arrays (OpenCV decodes images), so they suit any backend.
Each instance serves one model: ``request_inputs``/``response_outputs`` are called
once at load with the model's tensors, validate the settings, and remember the tensor
they act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from dlinfer.api import InferenceError, InvalidInput, ModelConfig, ModelLoadError, TensorSpec


def settings(config: ModelConfig, table: str, allowed: set[str]) -> dict[str, Any]:
    """``[parameters.<table>]`` of the model config, refusing unknown keys."""
    value = config.parameters.get(table, {})
    if not isinstance(value, Mapping):
        raise ModelLoadError(f"parameters.{table} must be a table, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ModelLoadError(f"parameters.{table}: unknown keys {unknown}; known: {sorted(allowed)}")
    return dict(value)


def _floats(value: Any, n: int, key: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ModelLoadError(f"{key} needs numbers, got {value!r}") from None
    if arr.size == 1:
        arr = np.repeat(arr, n)
    if arr.size != n:
        raise ModelLoadError(f"{key} needs 1 or {n} numbers, got {value!r}")
    return arr


def _pick(specs: list[TensorSpec], name: Any, key: str, what: str) -> TensorSpec:
    if name is not None:
        for s in specs:
            if s.name == name:
                return s
        raise ModelLoadError(f"{key} = {name!r}, but the model's {what}s are {[s.name for s in specs]}")
    if len(specs) != 1:
        raise ModelLoadError(f"the model has {len(specs)} {what}s; set {key} to the one to process")
    return specs[0]


@attrs.frozen
class _ImageSettings:
    input: str
    channels: int
    height: int
    width: int
    batched: bool
    dtype: np.dtype
    scale: float
    mean: np.ndarray
    std: np.ndarray
    bgr: bool
    interpolation: int
    shorter: int | None
    rows: int  # images per request the model takes; -1: any number


_INTERPOLATION = {"nearest": "INTER_NEAREST", "linear": "INTER_LINEAR", "cubic": "INTER_CUBIC", "area": "INTER_AREA"}


class ImageDecode:
    """``image``: encoded images (PNG, JPEG, ... in a BYTES tensor) -> resized, normalised NCHW floats.

    ``[parameters.image]``: ``input`` (model input fed, default its only input),
    ``size = [height, width]`` (default: the input's fixed H and W), ``resize_shorter``
    (scale the shorter side to this many pixels keeping the aspect ratio, then crop
    the centre ``size``; default: stretch to ``size``), ``scale``
    (default 1/255), ``mean`` and ``std`` per channel (default 0 and 1, applied after
    ``scale``), ``color`` ("rgb" default, or "bgr"), ``interpolation`` ("linear",
    "nearest", "cubic", "area"). The request sends one encoded image per batch row
    under the model input's name.
    """

    name = "image"
    keys = {"input", "size", "resize_shorter", "scale", "mean", "std", "color", "interpolation"}

    def __init__(self) -> None:
        self._s: _ImageSettings | None = None

    def request_inputs(self, inputs: list[TensorSpec], config: ModelConfig) -> list[TensorSpec]:
        import cv2

        p = settings(config, self.name, self.keys)
        target = _pick(inputs, p.get("input"), "parameters.image.input", "input")
        if target.datatype not in ("FP32", "FP16", "FP64") or len(target.shape) not in (3, 4):
            raise ModelLoadError(
                f"processor 'image' feeds floating-point CHW or NCHW inputs; "
                f"{target.name!r} is {target.datatype} {list(target.shape)}"
            )
        channels, height, width = target.shape[-3:]
        if "size" in p:
            size = p["size"]
            if not (isinstance(size, list) and len(size) == 2 and all(isinstance(d, int) and d > 0 for d in size)):
                raise ModelLoadError(f"parameters.image.size must be [height, width], got {size!r}")
            fixed = target.shape[-2:]
            if any(d not in (-1, want) for d, want in zip(fixed, size, strict=True)):
                raise ModelLoadError(
                    f"parameters.image.size {size} does not fit input {target.name!r} of shape {list(target.shape)}"
                )
            height, width = size
        if height == -1 or width == -1:
            raise ModelLoadError(f"input {target.name!r} has a dynamic height or width; set parameters.image.size")
        if channels not in (1, 3):
            raise ModelLoadError(f"processor 'image' makes 1 or 3 channels; input {target.name!r} has {channels}")
        color = p.get("color", "rgb")
        interp = p.get("interpolation", "linear")
        if color not in ("rgb", "bgr") or interp not in _INTERPOLATION:
            raise ModelLoadError(
                f"parameters.image: color must be 'rgb' or 'bgr' and interpolation one of {sorted(_INTERPOLATION)}"
            )
        shorter = p.get("resize_shorter")
        if shorter is not None and (
            not isinstance(shorter, int) or isinstance(shorter, bool) or shorter < max(height, width)
        ):
            raise ModelLoadError(
                f"parameters.image.resize_shorter must be an integer >= the crop size {max(height, width)}, "
                f"got {shorter!r}"
            )
        scale = p.get("scale", 1 / 255)
        if not isinstance(scale, int | float):
            raise ModelLoadError(f"parameters.image.scale must be a number, got {scale!r}")
        std = _floats(p.get("std", 1.0), channels, "parameters.image.std")
        if np.any(std == 0):
            raise ModelLoadError("parameters.image.std must not contain 0")
        self._s = _ImageSettings(
            input=target.name,
            channels=channels,
            height=height,
            width=width,
            batched=len(target.shape) == 4,
            dtype=np.dtype({"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}[target.datatype]),
            scale=float(scale),
            mean=_floats(p.get("mean", 0.0), channels, "parameters.image.mean").reshape(-1, 1, 1),
            std=std.reshape(-1, 1, 1),
            bgr=color == "bgr",
            interpolation=getattr(cv2, _INTERPOLATION[interp]),
            shorter=shorter,
            rows=target.shape[0] if len(target.shape) == 4 else 1,
        )
        return [TensorSpec(t.name, "BYTES", (self._s.rows,)) if t is target else t for t in inputs]

    def __call__(self, tensors: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
        s = self._s
        if s is None:
            raise ModelLoadError("processor 'image' was not bound to a model's inputs")
        data = tensors.get(s.input)
        if data is None:
            raise InvalidInput(f"processor 'image' needs input {s.input!r}")
        if data.dtype != object:
            raise InvalidInput(f"input {s.input!r}: send encoded images as BYTES, got {data.dtype} data")
        items = data.reshape(-1)
        if s.rows != -1 and items.size != s.rows:
            raise InvalidInput(f"input {s.input!r}: this model takes {s.rows} image(s) per request, got {items.size}")
        images = np.stack([self._one(item, i, s) for i, item in enumerate(items)]) if items.size else None
        if images is None:
            raise InvalidInput(f"input {s.input!r} holds no image")
        out = dict(tensors)
        out[s.input] = images if s.batched else images[0]
        return out

    @staticmethod
    def _one(item: Any, i: int, s: _ImageSettings) -> np.ndarray:
        import cv2

        if not isinstance(item, bytes | bytearray | memoryview) or not len(item):
            raise InvalidInput(f"input {s.input!r}[{i}]: expected encoded image bytes")
        flag = cv2.IMREAD_GRAYSCALE if s.channels == 1 else cv2.IMREAD_COLOR
        img = cv2.imdecode(np.frombuffer(item, dtype=np.uint8), flag)
        if img is None:
            raise InvalidInput(f"input {s.input!r}[{i}]: not an image OpenCV can decode (PNG, JPEG, BMP, ...)")
        img = _resize(img, s)
        if img.ndim == 2:
            img = img[:, :, None]
        elif not s.bgr:
            img = img[:, :, ::-1]  # OpenCV decodes to BGR
        chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
        return ((chw * s.scale - s.mean) / s.std).astype(s.dtype, copy=False)


def _resize(img: np.ndarray, s: _ImageSettings) -> np.ndarray:
    """Stretch to the model's size, or scale the shorter side and crop the centre (torchvision's eval recipe)."""
    import cv2

    h, w = img.shape[:2]
    if s.shorter is None:
        if (h, w) == (s.height, s.width):
            return img
        return cv2.resize(img, (s.width, s.height), interpolation=s.interpolation)
    ratio = s.shorter / min(h, w)
    nh, nw = max(round(h * ratio), s.height), max(round(w * ratio), s.width)
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=s.interpolation)
    top, left = (nh - s.height) // 2, (nw - s.width) // 2
    return img[top : top + s.height, left : left + s.width]


def _labels(p: dict[str, Any], table: str) -> np.ndarray | None:
    labels = p.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ModelLoadError(f"parameters.{table}.labels must be a list of strings")
    arr = np.empty(len(labels), dtype=object)
    arr[:] = [x.encode() for x in labels]
    return arr


def _class_labels(labels: np.ndarray, idx: np.ndarray, table: str) -> np.ndarray:
    if idx.size and int(idx.max()) >= labels.size:
        raise InferenceError(
            f"parameters.{table}.labels has {labels.size} names, but the model scored class {idx.max()}"
        )
    return labels[idx]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class TopK:
    """``topk``: the k best classes of a score tensor (last axis), best first.

    ``[parameters.topk]``: ``k`` (default 5), ``output`` (the model output scored,
    default its only output), ``softmax`` (turn logits into probabilities first,
    default false), ``labels`` (class names; adds a BYTES ``labels`` output).
    Replaces that output by ``classes`` (INT64) and ``scores`` (FP32); other
    outputs pass through.
    """

    name = "topk"
    keys = {"k", "output", "softmax", "labels"}
    default_k = 5

    def __init__(self) -> None:
        self._source: str | None = None
        self._k = 5
        self._softmax = False
        self._labels: np.ndarray | None = None

    def response_outputs(self, outputs: list[TensorSpec], config: ModelConfig) -> list[TensorSpec]:
        p = settings(config, self.name, self.keys)
        source = _pick(outputs, p.get("output"), f"parameters.{self.name}.output", "output")
        if not source.shape or source.datatype in ("BYTES", "BOOL"):
            raise ModelLoadError(f"processor {self.name!r} scores numeric outputs; {source.name!r} is not one")
        k = p.get("k", self.default_k)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ModelLoadError(f"parameters.{self.name}.k must be a positive integer, got {k!r}")
        classes = source.shape[-1]
        if classes != -1 and k > classes:
            raise ModelLoadError(f"parameters.{self.name}.k = {k} but output {source.name!r} has {classes} classes")
        self._source, self._k = source.name, k
        self._softmax = bool(p.get("softmax", False))
        self._labels = _labels(p, self.name)
        if self._labels is not None and classes != -1 and self._labels.size != classes:
            raise ModelLoadError(
                f"parameters.{self.name}.labels has {self._labels.size} names; output {source.name!r} "
                f"has {classes} classes"
            )
        return [t for t in outputs if t is not source] + self._specs(source.shape[:-1])

    def _specs(self, lead: tuple[int, ...]) -> list[TensorSpec]:
        shape = (*lead, self._k)
        specs = [TensorSpec("classes", "INT64", shape), TensorSpec("scores", "FP32", shape)]
        if self._labels is not None:
            specs.append(TensorSpec("labels", "BYTES", shape))
        return specs

    def __call__(self, tensors: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
        scores = self._scores(tensors)
        k = min(self._k, scores.shape[-1])
        part = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=-1), axis=-1, kind="stable")
        idx = np.take_along_axis(part, order, axis=-1).astype(np.int64)
        out = {n: v for n, v in tensors.items() if n != self._source}
        out["classes"] = idx
        out["scores"] = np.take_along_axis(scores, idx, axis=-1).astype(np.float32)
        if self._labels is not None:
            out["labels"] = _class_labels(self._labels, idx, self.name)
        return out

    def _scores(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        if self._source is None:
            raise ModelLoadError(f"processor {self.name!r} was not bound to a model's outputs")
        scores = np.asarray(tensors[self._source], dtype=np.float32)
        if scores.ndim == 0 or scores.shape[-1] == 0:
            raise InvalidInput(f"output {self._source!r} has no classes to rank")
        return _softmax(scores) if self._softmax else scores


class ArgMax(TopK):
    """``argmax``: the best class of a score tensor: ``class`` (INT64) and ``score`` (FP32),
    plus ``label`` with ``labels``. ``[parameters.argmax]`` takes ``output``, ``softmax``, ``labels``."""

    name = "argmax"
    keys = {"output", "softmax", "labels"}
    default_k = 1

    def _specs(self, lead: tuple[int, ...]) -> list[TensorSpec]:
        specs = [TensorSpec("class", "INT64", lead), TensorSpec("score", "FP32", lead)]
        if self._labels is not None:
            specs.append(TensorSpec("label", "BYTES", lead))
        return specs

    def __call__(self, tensors: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
        scores = self._scores(tensors)
        idx = scores.argmax(axis=-1).astype(np.int64)
        out = {n: v for n, v in tensors.items() if n != self._source}
        out["class"] = idx
        out["score"] = np.take_along_axis(scores, idx[..., None], axis=-1)[..., 0].astype(np.float32)
        if self._labels is not None:
            out["label"] = _class_labels(self._labels, idx, self.name)
        return out
