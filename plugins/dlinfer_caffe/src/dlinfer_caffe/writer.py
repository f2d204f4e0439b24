"""Writing real Caffe files from Python: ``deploy.prototxt`` + ``.caffemodel``
(given or random weights) and ``.binaryproto`` mean files.

Tests and examples use it to make Caffe models without Caffe; the files are
the public format, readable by Caffe and OpenCV DNN alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from .layers import Rule, Shape
from .proto import caffe_pb2
from .reader import PROTOTXT, parse_prototxt

Weights = dict[str, list[np.ndarray]]


def array_to_blob(array: np.ndarray, legacy: bool = False) -> caffe_pb2.BlobProto:
    """A float32 blob; ``legacy`` writes the old 4-D num/channels/height/width shape."""
    array = np.asarray(array, dtype=np.float32)
    blob = caffe_pb2.BlobProto()
    if legacy:
        if array.ndim > 4:
            raise ValueError(f"a legacy blob has at most 4 axes, got shape {list(array.shape)}")
        blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
    else:
        blob.shape.dim.extend(array.shape)
    # Encode the packed float field (5) directly: extending the repeated field from
    # Python would box every weight as a Python float.
    payload = array.astype("<f4").tobytes()
    size, header = len(payload), bytearray([5 << 3 | 2])
    while True:
        header.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            break
    blob.MergeFromString(bytes(header) + payload)
    return blob


def random_weights(net: caffe_pb2.NetParameter, seed: int = 0) -> Weights:
    """Random trained blobs of the right shapes for every layer that has any."""
    from .to_onnx import convert_net

    rng = np.random.default_rng(seed)
    made: Weights = {}

    def source(layer: caffe_pb2.LayerParameter, rule: Rule, shapes: list[Shape]) -> list[np.ndarray]:
        blobs = rule.random_blobs(layer, shapes, rng)
        if blobs:
            made[layer.name] = blobs
        return blobs

    convert_net(net, source)
    return made


def write_caffe_model(
    folder: Path,
    net: caffe_pb2.NetParameter | str,
    weights: Weights | None = None,
    *,
    seed: int = 0,
    legacy_blobs: bool = False,
    caffemodel: str = "model.caffemodel",
) -> Weights:
    """Write ``folder/deploy.prototxt`` and ``folder/<caffemodel>``; return the weights written.

    ``net`` is a NetParameter or prototxt text (``layer`` or legacy ``layers``
    entries); layers missing from ``weights`` get random ones.
    """
    if isinstance(net, str):
        net = parse_prototxt(net)
    weights = {**random_weights(net, seed), **(weights or {})}
    folder.mkdir(parents=True, exist_ok=True)
    deploy = caffe_pb2.NetParameter()
    deploy.CopyFrom(net)
    for layer in _entries(deploy):
        del layer.blobs[:]
    (folder / PROTOTXT).write_text(text_format.MessageToString(deploy))
    trained = caffe_pb2.NetParameter()
    trained.CopyFrom(deploy)
    for layer in _entries(trained):
        layer.blobs.extend(array_to_blob(a, legacy_blobs) for a in weights.get(layer.name, []))
    (folder / caffemodel).write_bytes(trained.SerializeToString())
    return weights


def _entries(net: caffe_pb2.NetParameter) -> list[caffe_pb2.LayerParameter | caffe_pb2.V1LayerParameter]:
    """The net's ``layer`` and legacy ``layers`` entries, as they are (not upgraded)."""
    return [*net.layer, *net.layers]


def write_mean_file(path: Path, mean: np.ndarray) -> None:
    """A ``.binaryproto`` mean image from an array [C, H, W] (stored as 1 x C x H x W, as Caffe does)."""
    mean = np.asarray(mean, dtype=np.float32)
    if mean.ndim != 3:
        raise ValueError(f"a mean image has shape [C, H, W], got {list(mean.shape)}")
    path.write_bytes(array_to_blob(mean[None], legacy=True).SerializeToString())
