"""Converted Caffe models against OpenCV DNN reading the same files.

OpenCV's Caffe importer is an implementation of Caffe's layers independent of
ours; agreement to 1e-4 of each output's scale means the converter reproduces
Caffe's semantics (padding, ceil rounding, averaging divisors, BN scale factors).
"""

from __future__ import annotations

import pytest

from dlinfer_caffe.testing import CLASSIC, L, conv, mixed, net, pool

from .conftest import relative_error

cv2 = pytest.importorskip("cv2")
if int(cv2.__version__.split(".")[0]) >= 5:
    pytest.skip("OpenCV 5 has no Caffe importer", allow_module_level=True)

TOL = 1e-4

# name -> (input shape, body, blobs to compare). Each exercises one layer type or corner case.
LAYER_NETS: dict[str, tuple[tuple[int, ...], str, list[str]]] = {
    "conv_hw": (
        (1, 3, 9, 8),
        L(
            "c",
            "Convolution",
            "data",
            params="convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 "
            "pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1 }",
        ),
        ["c"],
    ),
    "conv_group_dilation": (
        (1, 4, 10, 10),
        conv("c", "data", 6, 3, 1, 2, "group: 2 dilation: 2"),
        ["c"],
    ),
    "conv_no_bias_stride": ((1, 3, 11, 11), conv("c", "data", 5, 3, 3, 1, "bias_term: false"), ["c"]),
    "deconvolution": (
        (1, 4, 5, 5),
        L("d", "Deconvolution", "data", params="convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 }"),
        ["d"],
    ),
    "deconvolution_group": (
        (1, 4, 5, 6),
        L(
            "d",
            "Deconvolution",
            "data",
            params="convolution_param { num_output: 4 kernel_size: 3 stride: 2 group: 2 bias_term: false }",
        ),
        ["d"],
    ),
    "pool_max_ceil": ((1, 2, 8, 8), pool("p", "data", "MAX", 3, 2), ["p"]),
    "pool_ave_ceil_pad": ((1, 2, 7, 7), pool("p", "data", "AVE", 2, 2, 1), ["p"]),
    "pool_ave_clipped_window": ((1, 2, 6, 6), pool("p", "data", "AVE", 3, 2, 1), ["p"]),
    "pool_ave_past_end": ((1, 2, 8, 8), pool("p", "data", "AVE", 3, 2), ["p"]),
    "pool_max_pad": ((1, 2, 9, 9), pool("p", "data", "MAX", 3, 2, 1), ["p"]),
    "pool_hw": (
        (1, 2, 9, 7),
        L(
            "p",
            "Pooling",
            "data",
            params="pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }",
        ),
        ["p"],
    ),
    "pool_global_max": (
        (1, 3, 5, 7),
        L("p", "Pooling", "data", params="pooling_param { pool: MAX global_pooling: true }"),
        ["p"],
    ),
    "inner_product_axis2": (
        (1, 3, 4, 5),
        L("fc", "InnerProduct", "data", params="inner_product_param { num_output: 6 axis: 2 }"),
        ["fc"],
    ),
    "inner_product": (
        (1, 3, 4, 5),
        L("fc", "InnerProduct", "data", params="inner_product_param { num_output: 7 }"),
        ["fc"],
    ),
    "relu_leaky": ((1, 3, 4, 4), L("r", "ReLU", "data", params="relu_param { negative_slope: 0.2 }"), ["r"]),
    "prelu": ((1, 3, 4, 4), L("r", "PReLU", "data"), ["r"]),
    "prelu_shared": ((1, 3, 4, 4), L("r", "PReLU", "data", params="prelu_param { channel_shared: true }"), ["r"]),
    "sigmoid_tanh": ((1, 3, 4, 4), L("s", "Sigmoid", "data") + L("t", "TanH", "data"), ["s", "t"]),
    "elu": ((1, 3, 4, 4), L("e", "ELU", "data", params="elu_param { alpha: 0.5 }"), ["e"]),
    "batchnorm_scale": (
        (1, 3, 4, 4),
        L("bn", "BatchNorm", "data", "y", "batch_norm_param { eps: 0.001 }")
        + L("sc", "Scale", "y", "y", "scale_param { bias_term: true }"),
        ["y"],
    ),
    "batchnorm_2d": ((1, 6), L("bn", "BatchNorm", "data"), ["bn"]),
    "scale_no_bias": ((1, 3, 4, 4), L("sc", "Scale", "data"), ["sc"]),
    "eltwise": (
        (1, 3, 4, 4),
        conv("a", "data", 3, 1)
        + conv("b", "data", 3, 1)
        + conv("c", "data", 3, 1)
        + L("sum", "Eltwise", ["a", "b", "c"], params="eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 }")
        + L("prod", "Eltwise", ["a", "b"], params="eltwise_param { operation: PROD }")
        + L("max", "Eltwise", ["a", "b", "c"], params="eltwise_param { operation: MAX }"),
        ["sum", "prod", "max"],
    ),
    "concat_slice_split": (
        (1, 6, 4, 4),
        L("split", "Split", "data", ["s1", "s2"])
        + L("slice", "Slice", "s1", ["p1", "p2", "p3"], "slice_param { axis: 1 slice_point: 1 slice_point: 4 }")
        + L("halves", "Slice", "s2", ["h1", "h2"], "slice_param { axis: 2 }")
        + L("cat", "Concat", ["p3", "p1"])
        + L("cat2", "Concat", ["h2", "h1"], params="concat_param { axis: 2 }"),
        ["cat", "cat2", "p2"],
    ),
    "flatten_reshape_permute": (
        (1, 4, 3, 2),
        L("flat", "Flatten", "data", params="flatten_param { axis: 1 end_axis: 2 }")
        + L("perm", "Permute", "data", params="permute_param { order: 0 order: 2 order: 3 order: 1 }")
        + L("resh", "Reshape", "perm", params="reshape_param { shape { dim: 0 dim: -1 dim: 2 } }")
        + L("sm", "Softmax", "resh", params="softmax_param { axis: 2 }"),
        ["flat", "sm"],
    ),
    "lrn_across": (
        (1, 7, 5, 5),
        # OpenCV ignores k (it always adds 1); k != 1 is checked against numpy in test_reference.
        L("n", "LRN", "data", params="lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }"),
        ["n"],
    ),
    "lrn_within": (
        (1, 3, 6, 6),
        L("n", "LRN", "data", params="lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }"),
        ["n"],
    ),
    "power": (
        (1, 3, 4, 4),
        L("sq", "Power", "data", params="power_param { power: 2 scale: 0.5 shift: 1 }")
        + L("lin", "Power", "data", params="power_param { scale: -3 shift: 0.5 }"),
        ["sq", "lin"],
    ),
    "crop": (
        (1, 3, 10, 10),
        conv("ref", "data", 3, 3, 2)
        + L("crop", "Crop", ["data", "ref"], params="crop_param { axis: 2 offset: 1 offset: 2 }"),
        ["crop"],
    ),
    "dropout_in_place": (
        (1, 3, 4, 4),
        conv("c", "data", 3, 1) + L("drop", "Dropout", "c", "c") + L("r", "ReLU", "c", "c"),
        ["c"],
    ),
}


@pytest.mark.parametrize("case", sorted(LAYER_NETS))
def test_layer_matches_opencv(caffe_case, case: str) -> None:
    shape, body, blobs = LAYER_NETS[case]
    model = caffe_case(net(case, shape, body))
    x = model.inputs(batch=shape[0])
    ours = model.run_onnx(x, blobs)
    theirs = model.run_opencv(x, blobs)
    for b in blobs:
        assert ours[b].shape == tuple(theirs[b].shape), b
        assert relative_error(theirs[b], ours[b]) <= TOL, b


@pytest.mark.parametrize("arch", sorted(CLASSIC))
def test_classic_architecture_matches_opencv(caffe_case, arch: str) -> None:
    """Whole ImageNet-style networks: logits before softmax and the probabilities."""
    model = caffe_case(CLASSIC[arch]())
    logits = [n.input[0] for n in model.model.graph.node if n.op_type == "Softmax"]
    blobs = ["prob", *logits]
    x = model.inputs(batch=2)
    ours = model.run_onnx(x, blobs)
    theirs = model.run_opencv(x, blobs)
    for b in blobs:
        assert relative_error(theirs[b].reshape(ours[b].shape), ours[b]) <= TOL, b


def test_network_of_most_layer_types_matches_opencv(caffe_case) -> None:
    """One net chaining most layer types, with a batch bigger than the prototxt's."""
    model = caffe_case(mixed())
    types = {n.op_type for n in model.model.graph.node}
    assert {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LRN", "Split", "Slice", "Transpose"} <= types
    x = model.inputs(batch=3)
    blobs = ["prob", "fc", "s1"]
    ours = model.run_onnx(x, blobs)
    theirs = model.run_opencv(x, blobs)
    for b in blobs:
        assert ours[b].shape[0] == 3
        assert relative_error(theirs[b].reshape(ours[b].shape), ours[b]) <= TOL, b


def test_legacy_formats_match_opencv(caffe_case) -> None:
    """V1 ``layers`` entries (enum types), input/input_dim and 4-D legacy blob shapes."""
    text = """
name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 10 input_dim: 10
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         convolution_param { num_output: 4 kernel_size: 3 stride: 1 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""
    model = caffe_case(text, legacy_blobs=True)
    x = model.inputs()
    ours = model.run_onnx(x, ["fc", "prob"])
    theirs = model.run_opencv(x, ["fc", "prob"])
    for b in ("fc", "prob"):
        assert relative_error(theirs[b], ours[b]) <= TOL


@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v1"])
def test_whole_networks_match_opencv(caffe_case, arch: str) -> None:
    """Full-width, full-depth ResNet-50 (25.6 M weights) and MobileNet v1."""
    from dlinfer_caffe.testing import mobilenet, resnet

    text, logits = (resnet(1, (3, 4, 6, 3)), "fc1000") if arch == "resnet50" else (mobilenet(1, 13), "fc7")
    model = caffe_case(text)
    x = model.inputs(batch=2)
    ours = model.run_onnx(x, ["prob", logits])
    theirs = model.run_opencv(x, ["prob", logits])
    for b in ("prob", logits):
        assert relative_error(theirs[b].reshape(ours[b].shape), ours[b]) <= TOL, b
