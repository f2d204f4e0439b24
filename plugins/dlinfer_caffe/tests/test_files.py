"""Reading and writing Caffe's files, and the errors bad ones give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlinfer.api import ModelLoadError
from dlinfer_caffe.converter import convert_files
from dlinfer_caffe.loader import CaffeLoader
from dlinfer_caffe.reader import find_model_files, parse_prototxt, read_caffemodel, read_mean_file
from dlinfer_caffe.testing import L, conv, net
from dlinfer_caffe.writer import write_caffe_model, write_mean_file

SMALL = net("small", (1, 3, 8, 8), conv("conv1", "data", 4, 3) + L("relu", "ReLU", "conv1", "conv1"))


def test_written_files_read_back(tmp_path: Path) -> None:
    weights = write_caffe_model(tmp_path, SMALL, seed=5)
    deploy = parse_prototxt((tmp_path / "deploy.prototxt").read_text())
    assert [layer.name for layer in deploy.layer] == ["data", "conv1", "relu"]
    assert not any(layer.blobs for layer in deploy.layer)  # weights live in the caffemodel only
    trained = read_caffemodel(tmp_path / "model.caffemodel")
    conv1 = next(layer for layer in trained.layer if layer.name == "conv1")
    assert list(conv1.blobs[0].shape.dim) == [4, 3, 3, 3]
    np.testing.assert_array_equal(np.array(conv1.blobs[0].data).reshape(4, 3, 3, 3), weights["conv1"][0])


def test_input_declarations(tmp_path: Path) -> None:
    body = conv("c", "data", 2, 1)
    for i, header in enumerate(
        (
            'input: "data" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 4',
            'input: "data" input_shape { dim: 1 dim: 3 dim: 5 dim: 4 }',
            'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 4 } } }',
        )
    ):
        folder = tmp_path / str(i)
        write_caffe_model(folder, f'name: "n"\n{header}\n{body}')
        model = convert_files(folder / "deploy.prototxt", folder / "model.caffemodel")
        dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, 5, 4]
        out = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
        assert out == ["batch", 2, 5, 4]


def test_train_only_layers_are_left_out(tmp_path: Path) -> None:
    text = SMALL + (
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv1" bottom: "label" top: "loss" '
        "include { phase: TRAIN } }\n"
        'layer { name: "acc" type: "Accuracy" bottom: "conv1" bottom: "label" top: "acc" exclude { phase: TEST } }\n'
    )
    write_caffe_model(tmp_path, text)
    model = convert_files(tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel")
    assert [o.name for o in model.graph.output] == ["conv1"]


def test_mean_file_round_trip(tmp_path: Path) -> None:
    mean = np.random.default_rng(0).uniform(0, 255, (3, 4, 5)).astype(np.float32)
    write_mean_file(tmp_path / "mean.binaryproto", mean)
    np.testing.assert_array_equal(read_mean_file(tmp_path / "mean.binaryproto"), mean)
    (tmp_path / "bad.binaryproto").write_bytes(b"\x0a\xff\xff")
    with pytest.raises(ModelLoadError, match=r"bad\.binaryproto: not a Caffe mean file"):
        read_mean_file(tmp_path / "bad.binaryproto")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (L("t", "Threshold", "data"), r"layer 't' has type 'Threshold'.*supported layer types: .*Convolution"),
        (L("c", "Eltwise", ["data", "nowhere"]), r"layer 'c' \(Eltwise\): bottom 'nowhere' is not produced"),
        (L("s", "Slice", "data", ["a", "b"], "slice_param { slice_point: 5 }"), r"layer 's' \(Slice\): slice_point"),
        (L("p", "Pooling", "data", params="pooling_param { pool: STOCHASTIC kernel_size: 2 }"), "STOCHASTIC"),
        (L("e", "Eltwise", "data"), r"layer 'e' \(Eltwise\): needs at least 2 bottoms, has 1"),
        (L("r", "Reshape", "data", params="reshape_param { shape { dim: 7 dim: -1 } }"), "cannot infer the -1"),
    ],
)
def test_bad_networks_name_the_layer(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        write_caffe_model(tmp_path, net("bad", (1, 3, 4, 4), body))


def test_weights_must_match_the_prototxt(tmp_path: Path) -> None:
    write_caffe_model(tmp_path, SMALL)
    (tmp_path / "deploy.prototxt").write_text(SMALL.replace("kernel_size: 3", "kernel_size: 1"))
    with pytest.raises(ModelLoadError, match=r"blob 0 in model.caffemodel has shape \[4, 3, 3, 3\].*\[4, 3, 1, 1\]"):
        convert_files(tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel")
    (tmp_path / "deploy.prototxt").write_text(SMALL.replace('"conv1"', '"renamed"'))
    with pytest.raises(ModelLoadError, match=r"layer 'renamed' .*has no weights for it"):
        convert_files(tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel")


def test_detect_and_find_files(tmp_path: Path) -> None:
    assert CaffeLoader.detect(tmp_path) is None
    write_caffe_model(tmp_path, SMALL)
    assert CaffeLoader.detect(tmp_path) == "caffe"
    (tmp_path / "other.caffemodel").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="several weights files"):
        find_model_files(tmp_path)
    (tmp_path / "other.caffemodel").unlink()
    (tmp_path / "deploy.prototxt").unlink()
    with pytest.raises(ModelLoadError, match=r"has no deploy\.prototxt"):
        find_model_files(tmp_path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"layot": "NHWC"}, r"unknown keys \['layot'\]"),
        ({"layout": "HWC"}, "layout must be"),
        ({"mean_file": "../mean.binaryproto"}, "a file name in the version folder"),
        ({"mean_file": "absent.binaryproto"}, "has no absent.binaryproto"),
        ({"mean_value": [1, 2], "mean_file": "m.binaryproto"}, "not both"),
        ({"crop_size": 5}, r"crop_size 5 differs from the network's input 8x8"),
        ({"mean_value": [1.0, 2.0]}, "2 values for 3 channels"),
    ],
)
def test_bad_transform_settings(tmp_path: Path, table: dict, message: str) -> None:
    from dlinfer_caffe.transform import parse_transform, prepend_transform

    write_caffe_model(tmp_path, SMALL)
    model = convert_files(tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel")
    with pytest.raises(ModelLoadError, match=message):
        prepend_transform(model, parse_transform(table, tmp_path))


def test_syntax_errors_point_at_the_line_and_unsupported_layers() -> None:
    with pytest.raises(ModelLoadError, match=r'deploy\.prototxt: .* 2:\d+ : .*no field named "num_ouput"') as info:
        parse_prototxt('name: "x"\nlayer { name: "c" type: "Convolution" convolution_param { num_ouput: 2 } }')
    assert "cannot convert" not in str(info.value)  # a typo in a supported layer stays a typo
    text = 'name: "x"\nlayer { name: "det" type: "DetectionOutput" detection_output_param { num_classes: 21 } }'
    with pytest.raises(ModelLoadError, match=r"cannot convert: 'det' \(DetectionOutput\); supported: BatchNorm"):
        parse_prototxt(text)


def test_opset_choice(tmp_path: Path) -> None:
    import onnxruntime as ort

    write_caffe_model(tmp_path, SMALL)
    with pytest.raises(ModelLoadError, match="opset 13 or later, not 11"):
        convert_files(tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel", opset=11)
    x = np.ones((1, 3, 8, 8), np.float32)
    results = []
    for opset in (13, 21):
        model = convert_files(tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel", opset=opset)
        assert model.opset_import[0].version == opset
        results.append(ort.InferenceSession(model.SerializeToString()).run(None, {"data": x})[0])
    np.testing.assert_array_equal(*results)
