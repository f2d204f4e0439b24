"""Caffe network -> ONNX model: walks the layers in order, tracks blob shapes,
checks the trained blobs against the prototxt, and lets each layer's rule emit
its nodes.

Caffe blobs may be rewritten in place (``top == bottom``); ONNX tensors are
written once, so every write gets its own tensor and the last write of a
blob carries the blob's name. The network's outputs are, as in Caffe, the
blobs no later layer reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dlinfer.api import ModelLoadError

from .graph import Graph, LayerIO
from .layers import RULES, Rule, Shape, supported_types
from .proto import caffe_pb2
from .reader import blob_array, blob_shape, inference_layers

DEFAULT_OPSET = MIN_OPSET = 13

#: Supplies a layer's trained blobs, given the layer, its rule and its input shapes.
BlobSource = Callable[[caffe_pb2.LayerParameter, Rule, list[Shape]], list[np.ndarray]]


def _size(tensor: Any) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def network_inputs(net: caffe_pb2.NetParameter, layers: list[caffe_pb2.LayerParameter]) -> dict[str, Shape]:
    """Input blobs and shapes: legacy ``input``/``input_shape``/``input_dim`` and ``Input`` layers."""
    inputs: dict[str, Shape] = {}
    if net.input:
        if net.input_shape:
            if len(net.input_shape) != len(net.input):
                raise ModelLoadError(f"{len(net.input)} inputs but {len(net.input_shape)} input_shape entries")
            shapes = [tuple(int(d) for d in s.dim) for s in net.input_shape]
        elif net.input_dim:
            if len(net.input_dim) != 4 * len(net.input):
                raise ModelLoadError(
                    f"{len(net.input)} inputs need {4 * len(net.input)} input_dim values, got {len(net.input_dim)}"
                )
            dims = [int(d) for d in net.input_dim]
            shapes = [tuple(dims[4 * i : 4 * i + 4]) for i in range(len(net.input))]
        else:
            raise ModelLoadError("the network names inputs but gives no input_shape or input_dim")
        inputs.update(zip(net.input, shapes, strict=True))
    for layer in layers:
        if layer.type != "Input":
            continue
        shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
        if len(shapes) == 1:
            shapes *= len(layer.top)
        if len(shapes) != len(layer.top):
            raise ModelLoadError(f"layer {layer.name!r} (Input): {len(layer.top)} tops but {len(shapes)} shapes")
        inputs.update(zip(layer.top, shapes, strict=True))
    if not inputs:
        raise ModelLoadError("the network declares no input (no Input layer, no input/input_dim)")
    for name, shape in inputs.items():
        if not shape or any(d < 1 for d in shape):
            raise ModelLoadError(f"input {name!r} has shape {list(shape)}; every dimension must be positive")
    return inputs


def _shape_equals(blob: caffe_pb2.BlobProto, expected: Shape) -> bool:
    """Caffe's rule: a modern shape must match exactly; a legacy 4-D one after
    padding the expected shape with leading 1s."""
    if blob.HasField("shape"):
        return blob_shape(blob) == tuple(expected)
    if len(expected) > 4:
        return False
    return blob_shape(blob) == (1,) * (4 - len(expected)) + tuple(expected)


def caffemodel_blobs(weights: dict[str, list[caffe_pb2.BlobProto]], source: str = "the caffemodel") -> BlobSource:
    """A BlobSource reading trained blobs (from the prototxt itself, else the caffemodel) and checking their shapes."""

    def get(layer: caffe_pb2.LayerParameter, rule: Rule, shapes: list[Shape]) -> list[np.ndarray]:
        expected = rule.blob_shapes(layer, shapes)
        blobs = list(layer.blobs) or weights.get(layer.name, [])
        if not expected:
            return []
        where = f"layer {layer.name!r} ({layer.type})"
        if not blobs:
            raise ModelLoadError(f"{where}: {source} has no weights for it")
        if len(blobs) != len(expected):
            raise ModelLoadError(f"{where}: expects {len(expected)} blobs, {source} has {len(blobs)}")
        arrays = []
        for i, (blob, shape) in enumerate(zip(blobs, expected, strict=True)):
            if not _shape_equals(blob, shape):
                raise ModelLoadError(
                    f"{where}: blob {i} in {source} has shape {list(blob_shape(blob))}, "
                    f"the prototxt implies {list(shape)}"
                )
            arrays.append(blob_array(blob, f"{where} blob {i}").reshape(shape))
        return arrays

    return get


def _outputs(layers: list[caffe_pb2.LayerParameter], inputs: dict[str, Shape]) -> list[str]:
    """Blobs nobody reads after their last write: Caffe's network outputs, in order."""
    available: dict[str, None] = {}
    for layer in layers:
        for b in layer.bottom:
            available.pop(b, None)
        for t in layer.top:
            available[t] = None
    return [b for b in available if b not in inputs]


def convert_net(
    net: caffe_pb2.NetParameter,
    blobs: BlobSource,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    progress: Callable[[int, str], None] | None = None,
) -> Any:
    """Convert a parsed network to an ``onnx.ModelProto``; raise ModelLoadError naming the layer on failure.

    ``progress(total, layer_name)`` is called before each layer is converted.
    """
    import onnx
    from onnx import TensorProto, helper

    opset = opset or DEFAULT_OPSET
    if opset < MIN_OPSET:
        raise ModelLoadError(f"dlinfer-caffe converts to ONNX opset {MIN_OPSET} or later, not {opset}")
    layers = inference_layers(net)
    inputs = network_inputs(net, layers)
    compute = [layer for layer in layers if layer.type != "Input"]
    unsupported = [layer for layer in compute if layer.type not in RULES]
    if unsupported:
        layer = unsupported[0]
        raise ModelLoadError(
            f"layer {layer.name!r} has type {layer.type!r}, which dlinfer-caffe cannot convert; "
            f"supported layer types: {', '.join(supported_types())}"
        )
    outputs = _outputs(compute, inputs)
    if not outputs:
        raise ModelLoadError("the network computes nothing: no layer produces an output blob")

    g = Graph()
    for name in inputs:
        g.reserve(name)
    for name in outputs:
        g.reserve(name)
    last_write = {t: i for i, layer in enumerate(compute) for t in layer.top}
    tensor: dict[str, str] = {name: name for name in inputs}  # blob -> its current ONNX tensor
    shapes: dict[str, Shape] = dict(inputs)

    for i, layer in enumerate(compute):
        if progress:
            progress(len(compute), layer.name)
        rule = RULES[layer.type]
        where = f"layer {layer.name!r} ({layer.type})"
        for what, (lo, hi), have in (("bottoms", rule.bottoms, len(layer.bottom)), ("tops", rule.tops, len(layer.top))):
            if have < lo or (hi is not None and have > hi):
                wanted = f"{lo}" if hi == lo else f"at least {lo}" if hi is None else f"{lo} to {hi}"
                raise ModelLoadError(f"{where}: needs {wanted} {what}, has {have}")
        missing = [b for b in layer.bottom if b not in tensor]
        if missing:
            raise ModelLoadError(f"{where}: bottom {missing[0]!r} is not produced by any earlier layer or input")
        in_shapes = [shapes[b] for b in layer.bottom]
        arrays = blobs(layer, rule, in_shapes)
        tops = [t if last_write[t] == i and t not in inputs else g.fresh(f"{t}/{layer.name}") for t in layer.top]
        io = LayerIO(layer, [tensor[b] for b in layer.bottom], in_shapes, tops, arrays)
        out_shapes = rule.convert(g, io)
        for t, name, shape in zip(layer.top, tops, out_shapes, strict=True):
            tensor[t] = name
            shapes[t] = shape

    def dims(shape: Shape) -> list[int | str]:
        return ["batch", *shape[1:]] if dynamic_batch else list(shape)

    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims(s)) for n, s in inputs.items()]
    # Shape inference and the checker run on a skeleton whose large weights are declared
    # as inputs: the same graph to them, without copying hundreds of megabytes around.
    small = [t for t in g.initializers if _size(t) <= 4096]
    large = [t for t in g.initializers if _size(t) > 4096]
    skeleton = helper.make_model(
        helper.make_graph(
            g.nodes,
            net.name or "caffe",
            graph_inputs + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
            initializer=small,
        ),
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="dlinfer-caffe",
    )
    skeleton.ir_version = 8  # readable by every ONNX Runtime from 1.10 on
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True)
        types = {v.name: v.type for v in [*inferred.graph.value_info, *inferred.graph.output]}
        for out in skeleton.graph.output:
            if out.name in types:
                out.type.CopyFrom(types[out.name])
        onnx.checker.check_model(skeleton)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelLoadError(f"the converted ONNX model is invalid: {exc}") from exc
    model = skeleton
    del model.graph.input[len(graph_inputs) :]
    model.graph.initializer.extend(large)
    return model
