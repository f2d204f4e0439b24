"""``dlinfer-core convert --from caffe --to onnx`` end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlinfer.cli import main
from dlinfer_caffe.converter import opencv_outputs
from dlinfer_caffe.testing import CLASSIC, L
from dlinfer_caffe.writer import write_caffe_model


def test_convert_command_writes_a_validated_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    version = tmp_path / "squeezenet" / "1"
    write_caffe_model(version, CLASSIC["squeezenet"](), seed=2)
    out = tmp_path / "squeezenet.onnx"
    assert main(["convert", str(version), "--from", "caffe", "--to", "onnx", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "with caffe-onnx" in printed
    assert "compared with OpenCV DNN" in printed and "within tolerance" in printed

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((2, 3, 227, 227)).astype(np.float32)
    (got,) = session.run(["prob"], {"data": x})
    expected = opencv_outputs(version / "deploy.prototxt", version / "model.caffemodel", {"data": x}, ["prob"])
    np.testing.assert_allclose(got, expected["prob"], rtol=1e-3, atol=1e-6)


def test_convert_detects_the_format_and_reports_bad_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version = tmp_path / "1"
    text = 'name: "n"\ninput: "data"\ninput_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3\n' + L("r", "ReLU", "data")
    write_caffe_model(version, text)
    assert main(["convert", str(version / "deploy.prototxt"), "--no-validate"]) == 0
    assert (version / "model.onnx").is_file()
    # Any prototxt name, with the weights beside it.
    (version / "deploy.prototxt").rename(version / "net.prototxt")
    assert main(["convert", str(version / "net.prototxt"), "--from", "caffe", "-o", str(tmp_path / "n.onnx")]) == 0
    assert (tmp_path / "n.onnx").is_file()
    (version / "net.prototxt").rename(version / "deploy.prototxt")
    (version / "deploy.prototxt").write_text(text + L("t", "Threshold", "r"))
    assert main(["convert", str(version), "--from", "caffe", "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "layer 't' has type 'Threshold'" in err


def test_convert_skips_opencv_where_it_differs_from_caffe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = 'name: "n"\ninput: "data"\ninput_dim: 1 input_dim: 4 input_dim: 3 input_dim: 3\n' + L(
        "n", "LRN", "data", params="lrn_param { local_size: 3 k: 2 }"
    )
    write_caffe_model(tmp_path, text)
    assert main(["convert", str(tmp_path), "--from", "caffe", "-o", str(tmp_path / "n.onnx")]) == 0
    assert "not compared with OpenCV DNN: layer 'n': OpenCV ignores LRN's k" in capsys.readouterr().out


def test_convert_applies_the_model_configs_transform(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    version = tmp_path / "m" / "1"
    text = 'name: "n"\ninput: "data"\ninput_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n' + L("r", "ReLU", "data")
    write_caffe_model(version, text)
    config = tmp_path / "m" / "config.toml"
    config.write_text('[parameters]\nopset = 17\n[parameters.transform]\nlayout = "NHWC"\ndatatype = "UINT8"\n')
    out = tmp_path / "m.onnx"
    assert main(["convert", str(version), "--from", "caffe", "--model-config", str(config), "-o", str(out)]) == 0
    assert "the input transform is part of the graph" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 17
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 4, 4, 3]
