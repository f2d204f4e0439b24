"""Reading Caffe's files: ``deploy.prototxt`` (text format), ``.caffemodel``
(binary NetParameter) and ``.binaryproto`` mean files (binary BlobProto).

Everything here raises :class:`dlinfer.ModelLoadError` naming the file and
what is wrong with it; nothing executes code from a model file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import message, text_format

from dlinfer.api import ModelLoadError

from .proto import caffe_pb2

PROTOTXT = "deploy.prototxt"

#: Legacy V1 layer type enum -> the layer type strings of current Caffe.
V1_TYPES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

#: Parameter messages a V1 layer may carry, copied into the current LayerParameter.
_V1_PARAMS = (
    "concat_param",
    "convolution_param",
    "dropout_param",
    "eltwise_param",
    "inner_product_param",
    "lrn_param",
    "pooling_param",
    "power_param",
    "relu_param",
    "sigmoid_param",
    "softmax_param",
    "slice_param",
    "tanh_param",
    "transform_param",
    "loss_param",
)


def parse_prototxt(text: str, source: str = PROTOTXT) -> caffe_pb2.NetParameter:
    """Parse a network definition in protobuf text format."""
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        raise ModelLoadError(
            f"{source}: not a valid Caffe network definition: {exc}{_unsupported_hint(text)}"
        ) from None
    return net


def _unsupported_hint(text: str) -> str:
    """Name the unsupported layer types when their parameter messages are what failed
    to parse (the schema declares parameters of supported layers only)."""
    from .layers import supported_types

    lenient = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, lenient, allow_unknown_field=True)
        layers = all_layers(lenient)
    except (text_format.ParseError, ModelLoadError):
        return ""
    known = supported_types()
    unsupported = sorted({f"{layer.name!r} ({layer.type})" for layer in layers if layer.type not in known})
    if not unsupported:
        return ""
    return f"; layers of types dlinfer-caffe cannot convert: {', '.join(unsupported)}; supported: {', '.join(known)}"


def read_prototxt(path: Path) -> caffe_pb2.NetParameter:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path.name}: cannot read it: {exc}") from None
    return parse_prototxt(text, path.name)


def _parse_binary(msg: Any, path: Path, what: str) -> Any:
    """Fill ``msg`` from the binary protobuf file ``path``; I/O and decode errors name the file."""
    try:
        msg.ParseFromString(path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"{path.name}: cannot read it: {exc}") from None
    except message.DecodeError as exc:
        raise ModelLoadError(f"{path.name}: not a {what} (corrupt or truncated): {exc}") from None
    return msg


def read_caffemodel(path: Path) -> caffe_pb2.NetParameter:
    """Parse trained weights (a binary NetParameter)."""
    net = _parse_binary(caffe_pb2.NetParameter(), path, "Caffe weights file")
    if not net.layer and not net.layers:
        raise ModelLoadError(f"{path.name}: holds no layers; not a trained Caffe model")
    return net


def read_mean_file(path: Path) -> np.ndarray:
    """A ``.binaryproto`` mean image as a float32 array [C, H, W]."""
    blob = _parse_binary(caffe_pb2.BlobProto(), path, "Caffe mean file")
    arr = blob_array(blob, path.name)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ModelLoadError(f"{path.name}: a mean image has shape [C, H, W], this one {list(arr.shape)}")
    return arr


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The shape of a blob: ``shape`` if given, else the legacy 4-D num/channels/height/width."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


def _packed_values(blob: caffe_pb2.BlobProto) -> np.ndarray | None:
    """The blob's packed ``data`` (field 5) or ``double_data`` (field 8) straight from
    its wire bytes: protobuf's Python API yields values one Python float at a time,
    far too slowly for the millions of weights of a real network."""
    buf = blob.SerializeToString()
    i, found = 0, None
    while i < len(buf):
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            if field in (5, 8):
                return None  # unpacked values: let protobuf decode them
            i += 4
        elif wire == 2:
            size, i = _varint(buf, i)
            if field in (5, 8):
                dtype = "<f4" if field == 5 else "<f8"
                part = np.frombuffer(buf, dtype, size // np.dtype(dtype).itemsize, i)
                if field == 8 or found is None:  # double_data wins, as in Caffe
                    found = part
            i += size
        else:
            return None
    return found.astype(np.float32) if found is not None else np.zeros(0, np.float32)


def blob_array(blob: caffe_pb2.BlobProto, where: str) -> np.ndarray:
    """A blob's values as float32 numpy, shaped; single or double precision data."""
    shape = blob_shape(blob)
    values = _packed_values(blob)
    if values is None:
        values = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    count = int(np.prod(shape)) if shape else 1
    if values.size != count:
        raise ModelLoadError(f"{where}: blob of shape {list(shape)} holds {values.size} values instead of {count}")
    return values.reshape(shape)


def upgrade_v1(old: caffe_pb2.V1LayerParameter) -> caffe_pb2.LayerParameter:
    """A legacy ``layers`` entry as a current ``layer`` entry."""
    kind = caffe_pb2.V1LayerParameter.LayerType.Name(old.type)
    layer = caffe_pb2.LayerParameter(name=old.name, type=V1_TYPES.get(kind, kind))
    layer.bottom.extend(old.bottom)
    layer.top.extend(old.top)
    layer.blobs.extend(old.blobs)
    layer.include.extend(old.include)
    layer.exclude.extend(old.exclude)
    for field in _V1_PARAMS:
        if old.HasField(field):
            getattr(layer, field).CopyFrom(getattr(old, field))
    return layer


def all_layers(net: caffe_pb2.NetParameter) -> list[caffe_pb2.LayerParameter]:
    """The net's layers in order, legacy ones upgraded."""
    if net.layer and net.layers:
        raise ModelLoadError("the network mixes 'layer' and legacy 'layers' entries; use one kind")
    return list(net.layer) if net.layer else [upgrade_v1(v1) for v1 in net.layers]


def _meets(rule: caffe_pb2.NetStateRule, state: caffe_pb2.NetState) -> bool:
    """Caffe's NetStateRule test against the inference state (TEST phase)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(s not in state.stage for s in rule.stage):
        return False
    return not any(s in state.stage for s in rule.not_stage)


def inference_layers(net: caffe_pb2.NetParameter) -> list[caffe_pb2.LayerParameter]:
    """The layers Caffe instantiates for inference: include/exclude rules applied
    against the TEST phase (and the net's own level and stages)."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = caffe_pb2.TEST
    kept = []
    for layer in all_layers(net):
        if layer.include and layer.exclude:
            raise ModelLoadError(f"layer {layer.name!r} has both include and exclude rules")
        if layer.include and not any(_meets(r, state) for r in layer.include):
            continue
        if layer.exclude and any(_meets(r, state) for r in layer.exclude):
            continue
        kept.append(layer)
    return kept


def weights_by_layer(net: caffe_pb2.NetParameter) -> dict[str, list[caffe_pb2.BlobProto]]:
    """The trained blobs of every layer that has any, by layer name."""
    return {layer.name: list(layer.blobs) for layer in all_layers(net) if layer.blobs}


def find_model_files(folder: Path) -> tuple[Path, Path]:
    """``deploy.prototxt`` and the one ``*.caffemodel`` of a version folder."""
    prototxt = folder / PROTOTXT
    if not prototxt.is_file():
        raise ModelLoadError(f"version folder {folder.name!r} has no {PROTOTXT}")
    return prototxt, find_caffemodel(folder)


def find_caffemodel(folder: Path) -> Path:
    """The one ``*.caffemodel`` of a folder."""
    models = sorted(folder.glob("*.caffemodel"))
    if not models:
        raise ModelLoadError(f"folder {folder.name!r} has no *.caffemodel weights file")
    if len(models) > 1:
        names = ", ".join(m.name for m in models)
        raise ModelLoadError(f"folder {folder.name!r} has several weights files ({names}); keep one")
    return models[0]
