"""Caffe networks for tests and examples: prototxt builders and classic ImageNet architectures.

Write them to disk with :func:`dlinfer_caffe.writer.write_caffe_model`.

The classic ones follow the layer configurations of the deploy files published
with the original Caffe model zoo (AlexNet, GoogLeNet, ResNet, SqueezeNet,
MobileNet): the same layer types, kernels, strides, pads, groups, rounding and
topology at full input size, with channel counts divided by ``div`` so random
weights stay small. They are written here rather than copied.
"""

from __future__ import annotations


def net(name: str, shape: tuple[int, ...], body: str, legacy_input: bool = False) -> str:
    if legacy_input:
        dims = " ".join(f"input_dim: {d}" for d in shape)
        head = f'name: "{name}"\ninput: "data"\n{dims}\n'
    else:
        dims = " ".join(f"dim: {d}" for d in shape)
        head = (
            f'name: "{name}"\nlayer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
        )
    return head + body


def L(name: str, type_: str, bottom: str | list[str], top: str | list[str] | None = None, params: str = "") -> str:
    bottoms = [bottom] if isinstance(bottom, str) else bottom
    tops = [name] if top is None else [top] if isinstance(top, str) else top
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {b} {t} {params} }}\n'


def conv(name: str, bottom: str, n: int, k: int, s: int = 1, p: int = 0, extra: str = "") -> str:
    return L(
        name,
        "Convolution",
        bottom,
        params=(f"convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} {extra} }}"),
    )


def bn_scale_relu(prefix: str, blob: str, relu: bool = True) -> str:
    out = L(f"{prefix}_bn", "BatchNorm", blob, blob, "batch_norm_param { use_global_stats: true }")
    out += L(f"{prefix}_scale", "Scale", blob, blob, "scale_param { bias_term: true }")
    if relu:
        out += L(f"{prefix}_relu", "ReLU", blob, blob)
    return out


def pool(name: str, bottom: str, kind: str, k: int, s: int, p: int = 0) -> str:
    return L(name, "Pooling", bottom, params=f"pooling_param {{ pool: {kind} kernel_size: {k} stride: {s} pad: {p} }}")


def mixed() -> str:
    """One small net chaining most supported layer types (in-place layers, Split, Slice, Crop, ...)."""
    body = (
        conv("conv1", "data", 8, 3, 1, 1)
        + L("bn1", "BatchNorm", "conv1", "conv1")
        + L("sc1", "Scale", "conv1", "conv1", "scale_param { bias_term: true }")
        + L("prelu1", "PReLU", "conv1", "conv1")
        + L("pool1", "Pooling", "conv1", params="pooling_param { pool: MAX kernel_size: 3 stride: 2 }")
        + L("lrn1", "LRN", "pool1", params="lrn_param { local_size: 3 alpha: 0.001 beta: 0.75 }")
        + L("split1", "Split", "lrn1", ["a", "b"])
        + conv("conv_a", "a", 4, 1)
        + L("tanh_a", "TanH", "conv_a", "conv_a")
        + conv("conv_b", "b", 4, 3, 1, 1, "group: 2")
        + L("elu_b", "ELU", "conv_b", "conv_b")
        + L("sum", "Eltwise", ["conv_a", "conv_b"], params="eltwise_param { coeff: 1 coeff: 0.5 }")
        + L("cat", "Concat", ["sum", "conv_a"])
        + L("slice", "Slice", "cat", ["s1", "s2"], "slice_param { slice_point: 3 }")
        + L("sig", "Sigmoid", "s2", "s2")
        + L("pow", "Power", "s1", "s1", "power_param { scale: 2 shift: 0.1 }")
        + L("up", "Deconvolution", "s2", params="convolution_param { num_output: 2 kernel_size: 2 stride: 2 }")
        + L("crop", "Crop", ["up", "s1"], params="crop_param { axis: 2 offset: 1 }")
        + L("pool2", "Pooling", "crop", params="pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 }")
        + L("perm", "Permute", "pool2", params="permute_param { order: 0 order: 2 order: 3 order: 1 }")
        + L("flat", "Flatten", "perm")
        + L("drop", "Dropout", "flat", "flat")
        + L("fc", "InnerProduct", "flat", params="inner_product_param { num_output: 10 }")
        + L("relu", "ReLU", "fc", "fc", "relu_param { negative_slope: 0.1 }")
        + L("resh", "Reshape", "fc", params="reshape_param { shape { dim: 0 dim: 2 dim: 5 } }")
        + L("prob", "Softmax", "resh", params="softmax_param { axis: 2 }")
    )
    return net("mixed", (1, 3, 12, 12), body)


# --------------------------------------------------------------------------- classic


def alexnet(div: int = 16) -> str:
    c = [96 // div, 256 // div, 384 // div, 384 // div, 256 // div, 4096 // div]
    b = conv("conv1", "data", c[0], 11, 4)
    b += L("relu1", "ReLU", "conv1", "conv1")
    b += L("norm1", "LRN", "conv1", params="lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    b += pool("pool1", "norm1", "MAX", 3, 2)
    b += conv("conv2", "pool1", c[1], 5, 1, 2, "group: 2")
    b += L("relu2", "ReLU", "conv2", "conv2")
    b += L("norm2", "LRN", "conv2", params="lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    b += pool("pool2", "norm2", "MAX", 3, 2)
    b += conv("conv3", "pool2", c[2], 3, 1, 1) + L("relu3", "ReLU", "conv3", "conv3")
    b += conv("conv4", "conv3", c[3], 3, 1, 1, "group: 2") + L("relu4", "ReLU", "conv4", "conv4")
    b += conv("conv5", "conv4", c[4], 3, 1, 1, "group: 2") + L("relu5", "ReLU", "conv5", "conv5")
    b += pool("pool5", "conv5", "MAX", 3, 2)
    b += L("fc6", "InnerProduct", "pool5", params=f"inner_product_param {{ num_output: {c[5]} }}")
    b += L("relu6", "ReLU", "fc6", "fc6") + L("drop6", "Dropout", "fc6", "fc6", "dropout_param { dropout_ratio: 0.5 }")
    b += L("fc7", "InnerProduct", "fc6", params=f"inner_product_param {{ num_output: {c[5]} }}")
    b += L("relu7", "ReLU", "fc7", "fc7") + L("drop7", "Dropout", "fc7", "fc7", "dropout_param { dropout_ratio: 0.5 }")
    b += L("fc8", "InnerProduct", "fc7", params="inner_product_param { num_output: 1000 }")
    b += L("prob", "Softmax", "fc8")
    return net("AlexNet", (1, 3, 227, 227), b, legacy_input=True)


def _inception(name: str, bottom: str, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int) -> str:
    p = f"inception_{name}"
    b = conv(f"{p}/1x1", bottom, c1, 1) + L(f"{p}/relu_1x1", "ReLU", f"{p}/1x1", f"{p}/1x1")
    b += conv(f"{p}/3x3_reduce", bottom, c3r, 1) + L(
        f"{p}/relu_3x3_reduce", "ReLU", f"{p}/3x3_reduce", f"{p}/3x3_reduce"
    )
    b += conv(f"{p}/3x3", f"{p}/3x3_reduce", c3, 3, 1, 1) + L(f"{p}/relu_3x3", "ReLU", f"{p}/3x3", f"{p}/3x3")
    b += conv(f"{p}/5x5_reduce", bottom, c5r, 1) + L(
        f"{p}/relu_5x5_reduce", "ReLU", f"{p}/5x5_reduce", f"{p}/5x5_reduce"
    )
    b += conv(f"{p}/5x5", f"{p}/5x5_reduce", c5, 5, 1, 2) + L(f"{p}/relu_5x5", "ReLU", f"{p}/5x5", f"{p}/5x5")
    b += pool(f"{p}/pool", bottom, "MAX", 3, 1, 1)
    b += conv(f"{p}/pool_proj", f"{p}/pool", pp, 1) + L(
        f"{p}/relu_pool_proj", "ReLU", f"{p}/pool_proj", f"{p}/pool_proj"
    )
    b += L(f"{p}/output", "Concat", [f"{p}/1x1", f"{p}/3x3", f"{p}/5x5", f"{p}/pool_proj"])
    return b


def googlenet(div: int = 16) -> str:
    """The stem and first inception stage of GoogLeNet (ceil-rounded pools included)."""
    d = div
    b = conv("conv1/7x7_s2", "data", 64 // d, 7, 2, 3) + L("conv1/relu_7x7", "ReLU", "conv1/7x7_s2", "conv1/7x7_s2")
    b += pool("pool1/3x3_s2", "conv1/7x7_s2", "MAX", 3, 2)
    b += L("pool1/norm1", "LRN", "pool1/3x3_s2", params="lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    b += conv("conv2/3x3_reduce", "pool1/norm1", 64 // d, 1)
    b += L("conv2/relu_3x3_reduce", "ReLU", "conv2/3x3_reduce", "conv2/3x3_reduce")
    b += conv("conv2/3x3", "conv2/3x3_reduce", 192 // d, 3, 1, 1) + L(
        "conv2/relu_3x3", "ReLU", "conv2/3x3", "conv2/3x3"
    )
    b += L("conv2/norm2", "LRN", "conv2/3x3", params="lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    b += pool("pool2/3x3_s2", "conv2/norm2", "MAX", 3, 2)
    b += _inception("3a", "pool2/3x3_s2", 64 // d, 96 // d, 128 // d, 16 // d, 32 // d, 32 // d)
    b += _inception("3b", "inception_3a/output", 128 // d, 128 // d, 192 // d, 32 // d, 96 // d, 64 // d)
    b += pool("pool3/3x3_s2", "inception_3b/output", "MAX", 3, 2)
    b += L("pool5/7x7_s1", "Pooling", "pool3/3x3_s2", params="pooling_param { pool: AVE global_pooling: true }")
    b += L("pool5/drop_7x7_s1", "Dropout", "pool5/7x7_s1", "pool5/7x7_s1", "dropout_param { dropout_ratio: 0.4 }")
    b += L("loss3/classifier", "InnerProduct", "pool5/7x7_s1", params="inner_product_param { num_output: 1000 }")
    b += L("prob", "Softmax", "loss3/classifier")
    return net("GoogleNet", (1, 3, 224, 224), b)


def resnet(div: int = 16, depths: tuple[int, int, int, int] = (3, 1, 1, 1)) -> str:
    """ResNet-50's stem, bottleneck stages and 7x7 average pool. By default the
    first stage is complete (projection and identity blocks) and stages 3-5 have
    their first, downsampling block; ``depths=(3, 4, 6, 3)`` and ``div=1`` give the
    whole ResNet-50."""
    d = div
    b = conv("conv1", "data", 64 // d, 7, 2, 3, "bias_term: false") + bn_scale_relu("conv1", "conv1")
    b += pool("pool1", "conv1", "MAX", 3, 2)
    last = "pool1"
    blocks = [
        (f"{stage}{chr(ord('a') + i)}", width, 2 if i == 0 and stage > 2 else 1, i == 0)
        for stage, width, depth in zip((2, 3, 4, 5), (64, 128, 256, 512), depths, strict=True)
        for i in range(depth)
    ]
    for blk, width, stride, project in blocks:
        if project:
            b += conv(f"res{blk}_branch1", last, 4 * width // d, 1, stride, 0, "bias_term: false")
            b += bn_scale_relu(f"bn{blk}_branch1", f"res{blk}_branch1", relu=False)
            short = f"res{blk}_branch1"
        else:
            short = last
        b += conv(f"res{blk}_branch2a", last, width // d, 1, stride, 0, "bias_term: false")
        b += bn_scale_relu(f"bn{blk}_branch2a", f"res{blk}_branch2a")
        b += conv(f"res{blk}_branch2b", f"res{blk}_branch2a", width // d, 3, 1, 1, "bias_term: false")
        b += bn_scale_relu(f"bn{blk}_branch2b", f"res{blk}_branch2b")
        b += conv(f"res{blk}_branch2c", f"res{blk}_branch2b", 4 * width // d, 1, 1, 0, "bias_term: false")
        b += bn_scale_relu(f"bn{blk}_branch2c", f"res{blk}_branch2c", relu=False)
        b += L(f"res{blk}", "Eltwise", [short, f"res{blk}_branch2c"])
        b += L(f"res{blk}_relu", "ReLU", f"res{blk}", f"res{blk}")
        last = f"res{blk}"
    b += L("pool5", "Pooling", last, params="pooling_param { pool: AVE kernel_size: 7 stride: 1 }")
    b += L("fc1000", "InnerProduct", "pool5", params="inner_product_param { num_output: 1000 }")
    b += L("prob", "Softmax", "fc1000")
    return net("ResNet-50", (1, 3, 224, 224), b, legacy_input=True)


def squeezenet(div: int = 4) -> str:
    """SqueezeNet 1.1's stem and fire modules 2-5, its conv10 classifier and global pooling."""
    d = div
    b = conv("conv1", "data", 64 // d, 3, 2) + L("relu_conv1", "ReLU", "conv1", "conv1")
    b += pool("pool1", "conv1", "MAX", 3, 2)
    last = "pool1"
    for n, (sq, ex) in enumerate(((16, 64), (16, 64), (32, 128), (32, 128)), start=2):
        f = f"fire{n}"
        b += conv(f"{f}/squeeze1x1", last, max(sq // d, 1), 1) + L(
            f"{f}/relu_squeeze1x1", "ReLU", f"{f}/squeeze1x1", f"{f}/squeeze1x1"
        )
        b += conv(f"{f}/expand1x1", f"{f}/squeeze1x1", ex // d, 1) + L(
            f"{f}/relu_expand1x1", "ReLU", f"{f}/expand1x1", f"{f}/expand1x1"
        )
        b += conv(f"{f}/expand3x3", f"{f}/squeeze1x1", ex // d, 3, 1, 1) + L(
            f"{f}/relu_expand3x3", "ReLU", f"{f}/expand3x3", f"{f}/expand3x3"
        )
        b += L(f"{f}/concat", "Concat", [f"{f}/expand1x1", f"{f}/expand3x3"])
        last = f"{f}/concat"
        if n == 3:
            b += pool("pool3", last, "MAX", 3, 2)
            last = "pool3"
    b += L("drop9", "Dropout", last, last, "dropout_param { dropout_ratio: 0.5 }")
    b += conv("conv10", last, 1000 // d, 1) + L("relu_conv10", "ReLU", "conv10", "conv10")
    b += L("pool10", "Pooling", "conv10", params="pooling_param { pool: AVE global_pooling: true }")
    b += L("prob", "Softmax", "pool10")
    return net("SqueezeNet", (1, 3, 227, 227), b)


MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))


def mobilenet(div: int = 8, blocks: int = 4) -> str:
    """MobileNet v1: depthwise-separable blocks (grouped conv with group = channels),
    the first ``blocks`` of its 13 (all 13 and ``div=1``: the whole network)."""
    d = div
    b = conv("conv1", "data", 32 // d, 3, 2, 1, "bias_term: false") + bn_scale_relu("conv1", "conv1")
    last, ch = "conv1", 32 // d
    for i, (out, s) in enumerate(MOBILENET_BLOCKS[:blocks], start=2):
        dw, pw = f"conv{i}_1/dw", f"conv{i}_1/sep"
        b += conv(dw, last, ch, 3, s, 1, f"group: {ch} bias_term: false") + bn_scale_relu(dw, dw)
        b += conv(pw, dw, out // d, 1, 1, 0, "bias_term: false") + bn_scale_relu(pw, pw)
        last, ch = pw, out // d
    b += L("pool6", "Pooling", last, params="pooling_param { pool: AVE global_pooling: true }")
    b += conv("fc7", "pool6", 1000, 1)
    b += L("prob", "Softmax", "fc7")
    return net("MobileNet", (1, 3, 224, 224), b)


CLASSIC = {
    "alexnet": alexnet,
    "googlenet": googlenet,
    "resnet": resnet,
    "squeezenet": squeezenet,
    "mobilenet": mobilenet,
}
