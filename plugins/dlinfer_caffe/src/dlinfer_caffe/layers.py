"""How each Caffe layer type becomes ONNX: one rule per type.

A rule knows the shapes of the layer's trained blobs (used to check a
``.caffemodel`` against its prototxt and to make random weights), emits the
ONNX nodes that compute exactly what Caffe computes, and returns the shapes
of the layer's outputs. Shapes are Caffe's, with the prototxt's batch size;
nodes keep the batch dimension free wherever Caffe's semantics allow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from dlinfer.api import ModelLoadError

from .graph import Graph, LayerIO
from .proto import caffe_pb2

Shape = tuple[int, ...]

RULES: dict[str, Rule] = {}


def rule(cls: type[Rule]) -> type[Rule]:
    for name in cls.types:
        RULES[name] = cls()
    return cls


def supported_types() -> list[str]:
    return sorted({*RULES, "Input"})


def fail(io_or_layer: LayerIO | caffe_pb2.LayerParameter, why: str) -> ModelLoadError:
    layer = io_or_layer.layer if isinstance(io_or_layer, LayerIO) else io_or_layer
    return ModelLoadError(f"layer {layer.name!r} ({layer.type}): {why}")


def count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def norm_axis(io: LayerIO, axis: int, ndim: int) -> int:
    a = axis + ndim if axis < 0 else axis
    if not 0 <= a < ndim:
        raise fail(io, f"axis {axis} is out of range for a {ndim}-D input")
    return a


class Rule:
    """Conversion of one layer type; subclasses set ``types`` and override ``convert``."""

    types: ClassVar[tuple[str, ...]]
    #: How many bottoms the layer takes: (min, max); max None = any.
    bottoms: ClassVar[tuple[int, int | None]] = (1, 1)
    #: How many tops the layer makes: (min, max).
    tops: ClassVar[tuple[int, int | None]] = (1, 1)

    def blob_shapes(self, layer: caffe_pb2.LayerParameter, shapes: list[Shape]) -> list[Shape]:
        """The shapes of the trained blobs the layer needs (none by default)."""
        return []

    def random_blobs(
        self, layer: caffe_pb2.LayerParameter, shapes: list[Shape], rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Plausible random weights of the right shapes (for tests and examples)."""
        out = []
        for s in self.blob_shapes(layer, shapes):
            fan_in = count(s[1:]) if len(s) > 1 else 1
            scale = 1 / math.sqrt(fan_in) if len(s) > 1 else 0.1
            out.append((rng.standard_normal(s) * scale).astype(np.float32))
        return out

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        raise NotImplementedError


# --------------------------------------------------------------------------
# Convolution and pooling
# --------------------------------------------------------------------------


def _per_axis(
    io: LayerIO, what: str, repeated: list[int], hw: tuple[int, int] | None, n: int, default: int | None
) -> list[int]:
    """Caffe's "one value, one per spatial axis, or *_h/*_w" convention."""
    if hw is not None:
        if n != 2:
            raise fail(io, f"{what}_h/{what}_w apply to 2-D inputs only")
        return list(hw)
    values = list(repeated)
    if not values:
        if default is None:
            raise fail(io, f"{what} is not set")
        values = [default]
    if len(values) == 1:
        values *= n
    if len(values) != n:
        raise fail(io, f"{what} has {len(values)} values for {n} spatial axes")
    return [int(v) for v in values]


def conv_geometry(io: LayerIO) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, pads, strides, dilations of a Convolution/Deconvolution layer."""
    p = io.layer.convolution_param
    if p.axis != 1:
        raise fail(io, "only axis 1 (channels) is supported")
    n = len(io.shape) - 2
    if n < 1:
        raise fail(io, f"needs an input with spatial axes, got shape {list(io.shape)}")
    kernel = _per_axis(
        io,
        "kernel",
        p.kernel_size,
        (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") or p.HasField("kernel_w") else None,
        n,
        None,
    )
    pads = _per_axis(io, "pad", p.pad, (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else None, n, 0)
    strides = _per_axis(
        io,
        "stride",
        p.stride,
        (p.stride_h, p.stride_w) if p.HasField("stride_h") or p.HasField("stride_w") else None,
        n,
        1,
    )
    dilations = _per_axis(io, "dilation", p.dilation, None, n, 1)
    if min(kernel) < 1 or min(strides) < 1 or min(dilations) < 1:
        raise fail(io, "kernel, stride and dilation must be positive")
    return kernel, pads, strides, dilations


def _layer_io(layer: caffe_pb2.LayerParameter, shapes: list[Shape]) -> LayerIO:
    return LayerIO(layer, [], shapes, [], [])


class _Convolutional(Rule):
    """Convolution and Deconvolution: the same parameters, weights laid out the other
    way round, and a different ONNX op and output size."""

    onnx_op: ClassVar[str]
    #: The weight blob is (out, in/group, k...) for Conv and (in, out/group, k...) for ConvTranspose.
    transposed: ClassVar[bool]
    #: Why an output with a dimension below 1 is refused.
    empty_message: ClassVar[str]

    def blob_shapes(self, layer: caffe_pb2.LayerParameter, shapes: list[Shape]) -> list[Shape]:
        io = _layer_io(layer, shapes)
        p = layer.convolution_param
        kernel, *_ = conv_geometry(io)
        c_in, group, c_out = shapes[0][1], p.group, p.num_output
        if c_out < 1 or group < 1 or c_in % group or c_out % group:
            raise fail(io, f"num_output {c_out} and {c_in} input channels must both divide by group {group}")
        weight = (c_in, c_out // group) if self.transposed else (c_out, c_in // group)
        return [(*weight, *kernel)] + ([(c_out,)] if p.bias_term else [])

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.convolution_param
        kernel, pads, strides, dilations = conv_geometry(io)
        inputs = [io.x, g.const(io.blobs[0], f"{io.name}/weight")]
        if p.bias_term:
            inputs.append(g.const(io.blobs[1], f"{io.name}/bias"))
        g.node(
            self.onnx_op,
            inputs,
            io.tops[0],
            kernel_shape=kernel,
            pads=pads + pads,
            strides=strides,
            dilations=dilations,
            group=p.group,
        )
        geometry = zip(io.shape[2:], kernel, pads, strides, dilations, strict=True)
        spatial = [self.output_size(i, k, pd, s, d) for i, k, pd, s, d in geometry]
        if min(spatial) < 1:
            raise fail(io, self.empty_message.format(shape=list(io.shape)))
        return [(io.shape[0], p.num_output, *spatial)]

    @staticmethod
    def output_size(i: int, k: int, pd: int, s: int, d: int) -> int:
        """One spatial output dimension from input, kernel, pad, stride, dilation."""
        raise NotImplementedError


@rule
class Convolution(_Convolutional):
    types = ("Convolution",)
    onnx_op = "Conv"
    transposed = False
    empty_message = "the kernel does not fit the input of shape {shape}"

    @staticmethod
    def output_size(i: int, k: int, pd: int, s: int, d: int) -> int:
        return (i + 2 * pd - (d * (k - 1) + 1)) // s + 1


@rule
class Deconvolution(_Convolutional):
    types = ("Deconvolution",)
    onnx_op = "ConvTranspose"
    transposed = True
    empty_message = "the output for input shape {shape} would be empty"

    @staticmethod
    def output_size(i: int, k: int, pd: int, s: int, d: int) -> int:
        return s * (i - 1) + d * (k - 1) + 1 - 2 * pd


@rule
class Pooling(Rule):
    """MAX and AVE pooling with Caffe's output size and averaging divisor.

    Caffe rounds the output size up (``round_mode`` CEIL, the default) and drops
    a last window that would start inside the padding; its average divides by
    the window's cells inside the padded input, but not by cells beyond it.
    ONNX's ceil mode and ``count_include_pad`` each differ in corner cases, so
    the output size is computed here exactly and reproduced with explicit
    asymmetric padding (and a crop when the last window stops short of the
    input's end).
    """

    types = ("Pooling",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.pooling_param
        if len(io.shape) != 4:
            raise fail(io, f"pools 4-D inputs (N, C, H, W), got shape {list(io.shape)}")
        if p.pool not in (caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE):
            raise fail(io, "only MAX and AVE pooling are supported (STOCHASTIC is not)")
        is_max = p.pool == caffe_pb2.PoolingParameter.MAX
        n, c, *size = io.shape
        if p.global_pooling:
            if p.pad or p.pad_h or p.pad_w:
                raise fail(io, "global pooling takes no padding")
            g.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [io.x], io.tops[0])
            return [(n, c, 1, 1)]
        has_hw = p.HasField("kernel_h") or p.HasField("kernel_w")
        if not has_hw and not p.HasField("kernel_size"):
            raise fail(io, "kernel_size (or kernel_h and kernel_w) is not set")
        kernel = [p.kernel_h, p.kernel_w] if has_hw else [p.kernel_size] * 2
        pads = [p.pad_h, p.pad_w] if p.HasField("pad_h") or p.HasField("pad_w") else [p.pad] * 2
        strides = [p.stride_h, p.stride_w] if p.HasField("stride_h") or p.HasField("stride_w") else [p.stride] * 2
        if min(kernel) < 1 or min(strides) < 1:
            raise fail(io, "kernel and stride must be positive")
        if any(pd >= k for pd, k in zip(pads, kernel, strict=True)):
            raise fail(io, "padding must be smaller than the kernel")
        ceil = p.round_mode == caffe_pb2.PoolingParameter.CEIL
        pooled = []
        for i, k, pd, s in zip(size, kernel, pads, strides, strict=True):
            span = i + 2 * pd - k
            if span < 0:
                raise fail(io, f"the kernel does not fit the input of shape {list(io.shape)}")
            out = (-(-span // s) if ceil else span // s) + 1
            if (pads[0] or pads[1]) and (out - 1) * s >= i + pd:
                out -= 1  # the last window would start in the padding
            pooled.append(out)
        starts = [(o - 1) * s - pd for o, s, pd in zip(pooled, strides, pads, strict=True)]
        if any(st >= i for st, i in zip(starts, size, strict=True)):
            # Only without padding can Caffe round up to a window beyond the input; its values are undefined.
            raise fail(io, f"with input {list(io.shape)} the last window starts past the input's end (stride > kernel)")
        # Where the last window ends, in input coordinates (may be short of or past the input's end).
        ends = [(o - 1) * s + k - pd for o, s, k, pd in zip(pooled, strides, kernel, pads, strict=True)]
        x = io.x
        if any(e < i for e, i in zip(ends, size, strict=True)):
            x = g.node(
                "Slice",
                [
                    x,
                    g.ints([0, 0], "zeros"),
                    g.ints([min(e, i) for e, i in zip(ends, size, strict=True)], "ends"),
                    g.ints([2, 3], "axes"),
                ],
                base=f"{io.name}/crop",
            )
            size = [min(e, i) for e, i in zip(ends, size, strict=True)]
        extra = [e - i for e, i in zip(ends, size, strict=True)]  # >= 0 now: cells past the input's end
        common: dict[str, Any] = {"kernel_shape": kernel, "strides": strides}
        if is_max:
            g.node("MaxPool", [x], io.tops[0], pads=pads + extra, **common)
        else:
            # Zero-pad by Caffe's padding (counted in the divisor), then let the pool
            # add the cells past the padded end, which the divisor leaves out.
            inner = [min(pd, e) for pd, e in zip(pads, extra, strict=True)]
            if any(pads) or any(inner):
                x = g.node(
                    "Pad", [x, g.ints([0, 0, *pads, 0, 0, *inner], "pads")], base=f"{io.name}/pad", mode="constant"
                )
            outer = [e - i for e, i in zip(extra, inner, strict=True)]
            g.node("AveragePool", [x], io.tops[0], pads=[0, 0, *outer], count_include_pad=0, **common)
        return [(n, c, *pooled)]


# --------------------------------------------------------------------------
# Fully connected
# --------------------------------------------------------------------------


@rule
class InnerProduct(Rule):
    types = ("InnerProduct",)

    def blob_shapes(self, layer: caffe_pb2.LayerParameter, shapes: list[Shape]) -> list[Shape]:
        io = _layer_io(layer, shapes)
        p = layer.inner_product_param
        axis = norm_axis(io, p.axis, len(shapes[0]))
        k, n = count(shapes[0][axis:]), p.num_output
        if n < 1:
            raise fail(io, "num_output is not set")
        return [(k, n) if p.transpose else (n, k)] + ([(n,)] if p.bias_term else [])

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.inner_product_param
        axis = norm_axis(io, p.axis, len(io.shape))
        k, n = count(io.shape[axis:]), p.num_output
        x = io.x
        if len(io.shape) != axis + 1:
            x = g.node("Reshape", [x, g.ints([0] * axis + [k], "shape")], base=f"{io.name}/flat")
        if axis == 1:
            # Caffe stores [N, K] (or [K, N] with transpose); Gemm takes either as is.
            inputs = [x, g.const(io.blobs[0], f"{io.name}/weight")]
            if p.bias_term:
                inputs.append(g.const(io.blobs[1], f"{io.name}/bias"))
            g.node("Gemm", inputs, io.tops[0], transB=0 if p.transpose else 1)
        else:
            weight = io.blobs[0] if p.transpose else io.blobs[0].T  # as [K, N]
            y = g.node(
                "MatMul",
                [x, g.const(np.ascontiguousarray(weight), f"{io.name}/weight")],
                None if p.bias_term else io.tops[0],
                base=f"{io.name}/matmul",
            )
            if p.bias_term:
                g.node("Add", [y, g.const(io.blobs[1], f"{io.name}/bias")], io.tops[0])
        return [(*io.shape[:axis], n)]


# --------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------


@rule
class ReLU(Rule):
    types = ("ReLU",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        slope = io.layer.relu_param.negative_slope
        if slope:
            g.node("LeakyRelu", [io.x], io.tops[0], alpha=slope)
        else:
            g.node("Relu", [io.x], io.tops[0])
        return [io.shape]


@rule
class PReLU(Rule):
    types = ("PReLU",)

    def blob_shapes(self, layer: caffe_pb2.LayerParameter, shapes: list[Shape]) -> list[Shape]:
        if len(shapes[0]) < 2 and not layer.prelu_param.channel_shared:
            raise fail(layer, "needs an input with a channel axis")
        return [(1,)] if layer.prelu_param.channel_shared else [(shapes[0][1],)]

    def random_blobs(
        self, layer: caffe_pb2.LayerParameter, shapes: list[Shape], rng: np.random.Generator
    ) -> list[np.ndarray]:
        return [rng.uniform(0.05, 0.5, s).astype(np.float32) for s in self.blob_shapes(layer, shapes)]

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        slope = io.blobs[0]
        if not io.layer.prelu_param.channel_shared:
            slope = slope.reshape((-1,) + (1,) * (len(io.shape) - 2))
        g.node("PRelu", [io.x, g.const(slope, f"{io.name}/slope")], io.tops[0])
        return [io.shape]


class _Unary(Rule):
    op: ClassVar[str]

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        g.node(self.op, [io.x], io.tops[0])
        return [io.shape]


@rule
class Sigmoid(_Unary):
    types = ("Sigmoid",)
    op = "Sigmoid"


@rule
class TanH(_Unary):
    types = ("TanH",)
    op = "Tanh"


@rule
class ELU(Rule):
    types = ("ELU",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        g.node("Elu", [io.x], io.tops[0], alpha=io.layer.elu_param.alpha)
        return [io.shape]


@rule
class Power(Rule):
    """``y = (shift + scale * x) ^ power``."""

    types = ("Power",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.power_param
        steps: list[tuple[str, float]] = []
        if p.scale != 1:
            steps.append(("Mul", p.scale))
        if p.shift != 0:
            steps.append(("Add", p.shift))
        if p.power != 1:
            steps.append(("Pow", p.power))
        if not steps:
            g.node("Identity", [io.x], io.tops[0])
        x = io.x
        for i, (op, value) in enumerate(steps):
            last = i == len(steps) - 1
            x = g.node(op, [x, g.const(np.float32(value), f"{io.name}/{op.lower()}")], io.tops[0] if last else None)
        return [io.shape]


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------


@rule
class BatchNorm(Rule):
    """Caffe keeps the running mean and variance as sums scaled by a third blob
    (the moving-average scale factor); both are divided by it (0 means 0)."""

    types = ("BatchNorm",)

    def blob_shapes(self, layer: caffe_pb2.LayerParameter, shapes: list[Shape]) -> list[Shape]:
        c = shapes[0][1] if len(shapes[0]) > 1 else 1
        return [(c,), (c,), (1,)]

    def random_blobs(
        self, layer: caffe_pb2.LayerParameter, shapes: list[Shape], rng: np.random.Generator
    ) -> list[np.ndarray]:
        (c,), _, _ = self.blob_shapes(layer, shapes)
        factor = np.float32(rng.uniform(0.5, 2.0))
        mean = rng.standard_normal(c) * 0.5 * factor
        var = rng.uniform(0.5, 1.5, c) * factor
        return [mean.astype(np.float32), var.astype(np.float32), np.array([factor], np.float32)]

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.batch_norm_param
        if p.HasField("use_global_stats") and not p.use_global_stats:
            raise fail(io, "use_global_stats: false (batch statistics at inference) is not supported")
        factor = float(io.blobs[2].reshape(-1)[0])
        factor = 0.0 if factor == 0 else 1.0 / factor
        c = io.blobs[0].size
        g.node(
            "BatchNormalization",
            [
                io.x,
                g.const(np.ones(c), f"{io.name}/scale"),
                g.const(np.zeros(c), f"{io.name}/bias"),
                g.const(io.blobs[0] * factor, f"{io.name}/mean"),
                g.const(io.blobs[1] * factor, f"{io.name}/var"),
            ],
            io.tops[0],
            epsilon=p.eps,
        )
        return [io.shape]


def _scale_axes(io: LayerIO, axis: int, num_axes: int) -> tuple[int, Shape]:
    ndim = len(io.shape)
    a = axis + ndim if axis < 0 else axis
    if not 0 <= a <= ndim:
        raise fail(io, f"axis {axis} is out of range for a {ndim}-D input")
    if len(io.shapes) > 1:
        s = io.shapes[1]
        if tuple(io.shape[a : a + len(s)]) != tuple(s):
            raise fail(io, f"second input of shape {list(s)} does not match the first {list(io.shape)} at axis {a}")
        return a, s
    end = ndim if num_axes == -1 else a + num_axes
    if num_axes < -1 or end > ndim:
        raise fail(io, f"num_axes {num_axes} is out of range")
    return a, tuple(io.shape[a:end])


@rule
class Scale(Rule):
    """Per-channel (or per-axes) multiply, with an optional bias: a learned
    scale (one input) or a second input's values."""

    types = ("Scale",)
    bottoms = (1, 2)

    def blob_shapes(self, layer: caffe_pb2.LayerParameter, shapes: list[Shape]) -> list[Shape]:
        p = layer.scale_param
        _, s = _scale_axes(_layer_io(layer, shapes), p.axis, p.num_axes)
        learned = [s] if len(shapes) == 1 else []
        return learned + ([s] if p.bias_term else [])

    def random_blobs(
        self, layer: caffe_pb2.LayerParameter, shapes: list[Shape], rng: np.random.Generator
    ) -> list[np.ndarray]:
        blobs = [rng.uniform(0.5, 1.5, s).astype(np.float32) for s in self.blob_shapes(layer, shapes)]
        if layer.scale_param.bias_term:
            blobs[-1] = (rng.standard_normal(blobs[-1].shape) * 0.1).astype(np.float32)
        return blobs

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.scale_param
        a, s = _scale_axes(io, p.axis, p.num_axes)
        trailing = (1,) * (len(io.shape) - a - len(s))
        if len(io.shapes) > 1:
            target = [0 if a == 0 and i == 0 else d for i, d in enumerate(s)] + list(trailing)
            factor = g.node("Reshape", [io.bottoms[1], g.ints(target, "shape")], base=f"{io.name}/factor")
            bias = io.blobs[0] if p.bias_term else None
        else:
            factor = g.const(io.blobs[0].reshape(s + trailing), f"{io.name}/scale")
            bias = io.blobs[1] if p.bias_term else None
        y = g.node("Mul", [io.x, factor], None if bias is not None else io.tops[0], base=f"{io.name}/mul")
        if bias is not None:
            g.node("Add", [y, g.const(bias.reshape(s + trailing), f"{io.name}/bias")], io.tops[0])
        return [io.shape]


@rule
class LRN(Rule):
    """Local response normalisation. Across channels it is ONNX's LRN; within a
    channel Caffe computes ``x * (1 + alpha * avg_{size x size}(x^2)) ^ -beta``
    (the average over the zero-padded window, so always divided by size²)."""

    types = ("LRN",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.lrn_param
        if p.local_size % 2 == 0:
            raise fail(io, "local_size must be odd")
        if len(io.shape) != 4:
            raise fail(io, f"normalises 4-D inputs, got shape {list(io.shape)}")
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            g.node("LRN", [io.x], io.tops[0], size=p.local_size, alpha=p.alpha, beta=p.beta, bias=p.k)
            return [io.shape]
        pad = (p.local_size - 1) // 2
        sq = g.node("Mul", [io.x, io.x], base=f"{io.name}/square")
        avg = g.node(
            "AveragePool",
            [sq],
            base=f"{io.name}/average",
            kernel_shape=[p.local_size] * 2,
            pads=[pad] * 4,
            count_include_pad=1,
        )
        scaled = g.node("Mul", [avg, g.const(np.float32(p.alpha), f"{io.name}/alpha")], base=f"{io.name}/scaled")
        shifted = g.node("Add", [scaled, g.const(np.float32(1), f"{io.name}/one")], base=f"{io.name}/shifted")
        factor = g.node("Pow", [shifted, g.const(np.float32(-p.beta), f"{io.name}/beta")], base=f"{io.name}/factor")
        g.node("Mul", [io.x, factor], io.tops[0])
        return [io.shape]


@rule
class Softmax(Rule):
    types = ("Softmax",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        axis = norm_axis(io, io.layer.softmax_param.axis, len(io.shape))
        g.node("Softmax", [io.x], io.tops[0], axis=axis)
        return [io.shape]


# --------------------------------------------------------------------------
# Combining and routing blobs
# --------------------------------------------------------------------------


@rule
class Eltwise(Rule):
    types = ("Eltwise",)
    bottoms = (2, None)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.eltwise_param
        if any(s != io.shape for s in io.shapes):
            raise fail(io, f"inputs differ in shape: {[list(s) for s in io.shapes]}")
        op = p.operation
        if p.coeff and op != caffe_pb2.EltwiseParameter.SUM:
            raise fail(io, "coeff applies to the SUM operation only")
        if op == caffe_pb2.EltwiseParameter.SUM:
            coeffs = list(p.coeff) or [1.0] * len(io.bottoms)
            if len(coeffs) != len(io.bottoms):
                raise fail(io, f"{len(coeffs)} coeff values for {len(io.bottoms)} inputs")
            terms = [
                x if c == 1 else g.node("Mul", [x, g.const(np.float32(c), f"{io.name}/coeff")], base=f"{io.name}/term")
                for x, c in zip(io.bottoms, coeffs, strict=True)
            ]
            g.node("Sum", terms, io.tops[0])
        elif op == caffe_pb2.EltwiseParameter.PROD:
            x = io.bottoms[0]
            for i, other in enumerate(io.bottoms[1:]):
                x = g.node("Mul", [x, other], io.tops[0] if i == len(io.bottoms) - 2 else None)
        else:
            g.node("Max", list(io.bottoms), io.tops[0])
        return [io.shape]


@rule
class Concat(Rule):
    types = ("Concat",)
    bottoms = (1, None)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") and not p.HasField("axis") else p.axis
        a = norm_axis(io, axis, len(io.shape))
        for s in io.shapes:
            if len(s) != len(io.shape) or any(
                d != e for i, (d, e) in enumerate(zip(s, io.shape, strict=True)) if i != a
            ):
                raise fail(io, f"inputs differ outside axis {a}: {[list(s) for s in io.shapes]}")
        g.node("Concat", list(io.bottoms), io.tops[0], axis=a)
        out = list(io.shape)
        out[a] = sum(s[a] for s in io.shapes)
        return [tuple(out)]


@rule
class Slice(Rule):
    types = ("Slice",)
    tops = (1, None)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.slice_param
        axis = p.slice_dim if p.HasField("slice_dim") and not p.HasField("axis") else p.axis
        a = norm_axis(io, axis, len(io.shape))
        dim, n = io.shape[a], len(io.tops)
        if p.slice_point:
            points = list(p.slice_point)
            if len(points) != n - 1 or points != sorted(set(points)) or points[0] <= 0 or points[-1] >= dim:
                raise fail(io, f"slice_point {points} does not cut axis {a} of size {dim} into {n} parts")
            sizes = [b - e for b, e in zip([*points, dim], [0, *points], strict=True)]
        else:
            if dim % n:
                raise fail(io, f"axis {a} of size {dim} does not split evenly into {n} parts")
            sizes = [dim // n] * n
        if n == 1:
            g.node("Identity", [io.x], io.tops[0])
        else:
            g.multi("Split", [io.x, g.ints(sizes, "split")], list(io.tops), axis=a)
        return [tuple(size if i == a else d for i, d in enumerate(io.shape)) for size in sizes]


@rule
class Split(Rule):
    types = ("Split",)
    tops = (1, None)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        for top in io.tops:
            g.node("Identity", [io.x], top)
        return [io.shape] * len(io.tops)


@rule
class Dropout(Rule):
    """Inference passes values through unchanged (Caffe scales at training time)."""

    types = ("Dropout",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        g.node("Identity", [io.x], io.tops[0])
        return [io.shape]


@rule
class Crop(Rule):
    types = ("Crop",)
    bottoms = (2, 2)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.crop_param
        shape, ref = io.shapes
        if len(shape) != len(ref):
            raise fail(io, f"inputs have different ranks: {list(shape)} and {list(ref)}")
        a = norm_axis(io, p.axis, len(shape))
        axes = list(range(a, len(shape)))
        offsets = list(p.offset) or [0]
        if len(offsets) == 1:
            offsets *= len(axes)
        if len(offsets) != len(axes):
            raise fail(io, f"{len(offsets)} offsets for {len(axes)} cropped axes")
        for i, off in zip(axes, offsets, strict=True):
            if off + ref[i] > shape[i]:
                raise fail(io, f"cropping axis {i} to {ref[i]} at offset {off} leaves the input of size {shape[i]}")
        ends = [off + ref[i] for i, off in zip(axes, offsets, strict=True)]
        g.node("Slice", [io.x, g.ints(offsets, "starts"), g.ints(ends, "ends"), g.ints(axes, "axes")], io.tops[0])
        return [(*shape[:a], *ref[a:])]


# --------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------


@rule
class Flatten(Rule):
    types = ("Flatten",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.flatten_param
        a = norm_axis(io, p.axis, len(io.shape))
        e = norm_axis(io, p.end_axis, len(io.shape))
        if e < a:
            raise fail(io, f"end_axis {p.end_axis} comes before axis {p.axis}")
        # 0 keeps a leading dimension (the batch stays free); trailing ones are fixed.
        target = [0] * a + [-1] + list(io.shape[e + 1 :])
        g.node("Reshape", [io.x, g.ints(target, "shape")], io.tops[0])
        return [(*io.shape[:a], count(io.shape[a : e + 1]), *io.shape[e + 1 :])]


@rule
class Reshape(Rule):
    types = ("Reshape",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        p = io.layer.reshape_param
        ndim = len(io.shape)
        start = p.axis if p.axis >= 0 else ndim + p.axis + 1
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if not 0 <= start <= ndim or p.num_axes < -1 or end > ndim:
            raise fail(io, f"axis {p.axis} / num_axes {p.num_axes} are out of range for a {ndim}-D input")
        dims = [int(d) for d in p.shape.dim]
        if dims.count(-1) > 1 or any(d < -1 for d in dims):
            raise fail(io, f"shape {dims}: at most one -1 and no other negative dimension")
        out = [*io.shape[:start], *dims, *io.shape[end:]]
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= ndim:
                    raise fail(io, f"dim 0 at position {start + i} copies an input axis that does not exist")
                out[start + i] = io.shape[start + i]
        if -1 in dims:
            known = count([d for d in out if d != -1])
            if known == 0 or count(io.shape) % known:
                raise fail(io, f"cannot infer the -1 dimension of {dims} from input shape {list(io.shape)}")
            out[out.index(-1)] = count(io.shape) // known
        if count(out) != count(io.shape):
            raise fail(io, f"shape {out} does not hold the {count(io.shape)} values of input {list(io.shape)}")
        target = [0] * start + dims + list(io.shape[end:])
        if start == 0 and dims and dims[0] == io.shape[0]:
            # A deploy file spelling out its batch size (``dim: 1``) means "keep the batch":
            # copy it, so that other batch sizes keep their own.
            target[0] = 0
        g.node("Reshape", [io.x, g.ints(target, "shape")], io.tops[0])
        return [tuple(out)]


@rule
class Permute(Rule):
    types = ("Permute",)

    def convert(self, g: Graph, io: LayerIO) -> list[Shape]:
        ndim = len(io.shape)
        order = [int(o) for o in io.layer.permute_param.order]
        if len(set(order)) != len(order) or any(o >= ndim for o in order):
            raise fail(io, f"order {order} is not a permutation of the {ndim} axes")
        order += [i for i in range(ndim) if i not in order]  # unnamed axes keep their order
        g.node("Transpose", [io.x], io.tops[0], perm=order)
        return [tuple(io.shape[o] for o in order)]
