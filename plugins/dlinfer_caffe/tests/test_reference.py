"""Converted layers against Caffe's arithmetic written out in numpy, for the
cases OpenCV DNN cannot check (it reads pooling's round_mode field as its own
ceil_mode flag and ignores LRN's k) and for exhaustive pooling geometry."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dlinfer_caffe.testing import L, net

from .conftest import relative_error


def caffe_pool(x: np.ndarray, k: int, s: int, p: int, ave: bool, ceil: bool) -> np.ndarray:
    """Caffe's PoolingLayer forward (square kernel), as its C++ computes it."""
    n, c, h, w = x.shape

    def size(length: int) -> int:
        span = length + 2 * p - k
        return (-(-span // s) if ceil else span // s) + 1

    ph, pw = size(h), size(w)
    if p:
        ph -= (ph - 1) * s >= h + p
        pw -= (pw - 1) * s >= w + p
    y = np.zeros((n, c, ph, pw), np.float64)
    for i, j in itertools.product(range(ph), range(pw)):
        hs, ws = i * s - p, j * s - p
        he, we = min(hs + k, h + p), min(ws + k, w + p)
        count = (he - hs) * (we - ws)
        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
        window = x[:, :, hs:he, ws:we]
        y[:, :, i, j] = window.sum((2, 3)) / count if ave else window.max((2, 3))
    return y


def test_pooling_geometry_sweep_matches_caffe(caffe_case) -> None:
    """Every kernel/stride/pad/rounding/method combination on several input sizes."""
    for size in (5, 6, 7, 8):
        body, cases = "", {}
        for k, s, mode, method in itertools.product((1, 2, 3, 4), (1, 2, 3, 4), ("CEIL", "FLOOR"), ("MAX", "AVE")):
            for p in range(k):
                last_start = (-(-(size + 2 * p - k) // s) if mode == "CEIL" else (size + 2 * p - k) // s) * s - p
                if k > size or (p == 0 and last_start >= size):
                    continue  # Caffe's output is undefined there; the converter refuses it (tested below)
                name = f"p_k{k}_s{s}_p{p}_{mode}_{method}"
                body += L(
                    name,
                    "Pooling",
                    "data",
                    params=f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} "
                    f"round_mode: {mode} }}",
                )
                cases[name] = (k, s, p, method == "AVE", mode == "CEIL")
        model = caffe_case(net(f"pool{size}", (1, 2, size, size), body))
        x = model.inputs(batch=2)
        ours = model.run_onnx(x, list(cases))
        for name, (k, s, p, ave, ceil) in cases.items():
            expected = caffe_pool(x["data"].astype(np.float64), k, s, p, ave, ceil)
            assert ours[name].shape == expected.shape, name
            np.testing.assert_allclose(ours[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_lrn_across_channels_with_k(caffe_case) -> None:
    size, alpha, beta, k = 5, 0.3, 0.75, 2.0
    model = caffe_case(
        net(
            "lrn",
            (1, 7, 3, 3),
            L("n", "LRN", "data", params=f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}"),
        )
    )
    x = model.inputs()["data"].astype(np.float64)
    padded = np.pad(x**2, ((0, 0), (size // 2, size // 2), (0, 0), (0, 0)))
    sums = sum(padded[:, i : i + x.shape[1]] for i in range(size))
    expected = x * (k + alpha / size * sums) ** -beta
    got = model.run_onnx({"data": x.astype(np.float32)}, ["n"])["n"]
    assert relative_error(expected, got) <= 1e-5


def test_inner_product_transpose_and_scale_factor_zero(caffe_case) -> None:
    body = L("fc", "InnerProduct", "data", params="inner_product_param { num_output: 4 transpose: true }") + L(
        "bn", "BatchNorm", "fc", params="batch_norm_param { eps: 0.01 }"
    )
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 4)).astype(np.float32)  # [K, N] when transposed
    b = rng.standard_normal(4).astype(np.float32)
    stats = [rng.standard_normal(4).astype(np.float32), np.ones(4, np.float32), np.zeros(1, np.float32)]
    text = net("ip", (1, 3, 2, 2), body)
    model = caffe_case(text)
    # Rewrite with chosen weights: a zero scale factor means mean = var = 0 in Caffe.
    from dlinfer_caffe.writer import write_caffe_model

    write_caffe_model(model.folder, text, {"fc": [w, b], "bn": stats})
    from dlinfer_caffe.converter import convert_files

    model.model = convert_files(model.prototxt, model.caffemodel)
    x = model.inputs()["data"]
    fc = x.reshape(2, -1) @ w + b
    got = model.run_onnx({"data": x}, ["fc", "bn"])
    np.testing.assert_allclose(got["fc"], fc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["bn"], fc / np.sqrt(0.01), rtol=1e-5, atol=1e-5)


def test_scale_by_second_input_and_partial_reshape(caffe_case) -> None:
    text = (
        'name: "two"\n'
        'layer { name: "in" type: "Input" top: "data" top: "w" '
        "input_param { shape { dim: 1 dim: 6 dim: 2 dim: 2 } shape { dim: 6 } } }\n"
        + L("sc", "Scale", ["data", "w"], params="scale_param { axis: 1 bias_term: true }")
        + L("r", "Reshape", "sc", params="reshape_param { shape { dim: 2 dim: -1 } axis: 1 num_axes: 1 }")
        + L("f", "Flatten", "r", params="flatten_param { axis: 2 }")
    )
    model = caffe_case(text)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 2, 2)).astype(np.float32)
    w = rng.standard_normal(6).astype(np.float32)
    got = model.run_onnx({"data": x, "w": w}, ["sc", "r", "f"])
    bias = model.weights["sc"][0]
    expected = x * w[None, :, None, None] + bias[None, :, None, None]
    np.testing.assert_allclose(got["sc"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["r"], expected.reshape(3, 2, 3, 2, 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["f"], expected.reshape(3, 2, 12), rtol=1e-5, atol=1e-6)


def test_pooling_window_past_the_input_is_refused(caffe_case) -> None:
    from dlinfer.api import ModelLoadError

    text = net("bad", (1, 1, 5, 5), L("p", "Pooling", "data", params="pooling_param { kernel_size: 1 stride: 3 }"))
    with pytest.raises(ModelLoadError, match=r"layer 'p' \(Pooling\): .*starts past the input's end"):
        caffe_case(text)


def test_reshape_spelling_out_the_batch_keeps_it_dynamic(caffe_case) -> None:
    text = net("r", (1, 2, 3, 4), L("r", "Reshape", "data", params="reshape_param { shape { dim: 1 dim: -1 } }"))
    model = caffe_case(text)
    x = model.inputs(batch=3)["data"]
    np.testing.assert_array_equal(model.run_onnx({"data": x}, ["r"])["r"], x.reshape(3, -1))
