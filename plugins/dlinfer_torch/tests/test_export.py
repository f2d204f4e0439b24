"""torch -> ONNX: the importable helper, each source format and opset, and the convert command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tomli_w
import torch

from dlinfer.api import ModelLoadError, TensorSpec, model_config_from_dict
from dlinfer_torch import testing as tt
from dlinfer_torch.export import ExportError, export_onnx

CNN_CONFIG = {"max_batch_size": 8, "input": [{"name": "image", "datatype": "FP32", "shape": [3, 16, 16]}]}


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.mark.parametrize("opset", [9, 13, 17])
def test_module_round_trip_with_dynamic_batch(tmp_path: Path, opset: int) -> None:
    cnn = tt.make(tt.TinyCNN, seed=2)
    result = export_onnx(cnn, tmp_path / "cnn.onnx", config=model_config_from_dict(CNN_CONFIG, "-"), opset=opset)
    assert result.max_abs_error is not None and result.max_abs_error <= 1e-4
    model = onnx.load(str(tmp_path / "cnn.onnx"))
    assert model.opset_import[0].version == opset
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(9).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        expected = cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(tmp_path / "cnn.onnx", {"image": x})["output"], expected, atol=1e-4, rtol=0)


def test_exported_program_with_dict_outputs(tmp_path: Path) -> None:
    module = tt.make(tt.DictOut, seed=5)
    src = tt.save_exported(module, (torch.randn(2, 6),), tmp_path / "model.pt2")
    result = export_onnx(src, tmp_path / "dict.onnx", opset=11)
    assert result.max_abs_error is not None and result.max_abs_error <= 1e-4
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    got = _ort(tmp_path / "dict.onnx", {"x": x})
    with torch.inference_mode():
        expected = module(torch.from_numpy(x))
    assert set(got) == {"logits", "probs"}
    for name in got:
        np.testing.assert_allclose(got[name], expected[name].numpy(), atol=1e-4, rtol=0)


def test_torchscript_multi_io_keeps_config_names(tmp_path: Path) -> None:
    module = tt.make(tt.TwoInTwoOut, seed=6)
    src = tt.save_torchscript(module, tmp_path / "model.pt")
    config = model_config_from_dict(
        {
            "max_batch_size": 4,
            "input": [
                {"name": "image", "datatype": "FP32", "shape": [3, 8, 8]},
                {"name": "extra", "datatype": "FP32", "shape": [4]},
            ],
            "output": [
                {"name": "logits", "datatype": "FP32", "shape": [3]},
                {"name": "pooled", "datatype": "FP32", "shape": [4]},
            ],
        },
        "-",
    )
    export_onnx(src, tmp_path / "two.onnx", config=config)
    rng = np.random.default_rng(2)
    image = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    extra = rng.standard_normal((3, 4)).astype(np.float32)
    got = _ort(tmp_path / "two.onnx", {"image": image, "extra": extra})
    with torch.inference_mode():
        logits, pooled = module(torch.from_numpy(image), torch.from_numpy(extra))
    np.testing.assert_allclose(got["logits"], logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["pooled"], pooled.numpy(), atol=1e-4, rtol=0)


def test_state_dict_folder_and_refusals(tmp_path: Path) -> None:
    tt.save_state_dict(tt.make(tt.TinyCNN, seed=3), tmp_path / "model.pt")
    with_class = {**CNN_CONFIG, "parameters": {"model_class": "dlinfer_torch.testing:TinyCNN"}}
    result = export_onnx(tmp_path, tmp_path / "sd.onnx", config=model_config_from_dict(with_class, "-"))
    assert result.max_abs_error is not None and result.max_abs_error <= 1e-4
    with pytest.raises(ModelLoadError, match=r"parameters\.model_class"):
        export_onnx(tmp_path, tmp_path / "x.onnx", config=model_config_from_dict(CNN_CONFIG, "-"))
    with pytest.raises(ExportError, match="opset 18"):
        export_onnx(tt.make(tt.TinyCNN), tmp_path / "x.onnx", config=model_config_from_dict(CNN_CONFIG, "-"), opset=18)
    tt.save_pickled(tt.make(tt.TinyCNN), tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        export_onnx(tmp_path, tmp_path / "x.onnx", config=model_config_from_dict(CNN_CONFIG, "-"))


def test_convert_command_prints_validation(tmp_path: Path) -> None:
    vdir = tmp_path / "cnn" / "1"
    vdir.mkdir(parents=True)
    tt.save_torchscript(tt.make(tt.TinyCNN, seed=4), vdir / "model.pt")
    cfg = tmp_path / "cnn" / "config.toml"
    cfg.write_text(tomli_w.dumps(CNN_CONFIG))
    out = tmp_path / "cnn.onnx"
    cmd = [sys.executable, "-m", "dlinfer.cli", "convert", str(vdir), "--to", "onnx", "--opset", "13"]
    proc = subprocess.run(
        [*cmd, "--model-config", str(cfg), "-o", str(out)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr
    assert "(torchscript)" in proc.stdout and "torch-onnx" in proc.stdout
    match = re.search(r"validation: max abs error (\S+), max rel error (\S+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) <= 1e-4
    assert onnx.load(str(out)).opset_import[0].version == 13
    bad = subprocess.run([*cmd[:-1], "21", "--model-config", str(cfg)], capture_output=True, text=True, timeout=240)
    assert bad.returncode != 0
    assert "opset 21" in bad.stderr


def test_explicit_tensor_specs_for_callers_without_a_config(tmp_path: Path) -> None:
    """How another plugin (e.g. a TensorRT builder) calls the helper: specs and names in, ONNX out."""
    cnn = tt.make(tt.TinyCNN, seed=12)
    dst = tmp_path / "cnn.onnx"
    result = export_onnx(
        cnn, dst, inputs=[TensorSpec("pixels", "FP32", (-1, 3, 16, 16))], output_names=["logits"], opset=9
    )
    assert result.max_abs_error is not None and result.max_abs_error <= 1e-4
    x = np.random.default_rng(4).standard_normal((6, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        expected = cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(dst, {"pixels": x})["logits"], expected, atol=1e-4, rtol=0)
