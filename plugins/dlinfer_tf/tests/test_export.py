"""ONNX export through tf2onnx: the importable helper and ``dlinfer-core convert`` as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dlinfer.api import ModelLoadError
from dlinfer_tf.export import export_onnx

ATOL = 1e-4


def _onnx_run(path: Path, **feed: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def test_keras_export_with_opset(repository, reference, tmp_path):
    dst = tmp_path / "cnn.onnx"
    result = export_onnx(repository / "cnn" / "1" / "model.keras", dst, opset=13)
    assert result.output == dst and _opset(dst) == 13
    assert result.max_abs_error is not None and result.max_abs_error <= ATOL
    x = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(_onnx_run(dst, image=x)["probs"], reference["cnn"](x).numpy(), atol=ATOL)


def test_savedmodel_signature_export(repository, reference, call_tf, tmp_path):
    dst = tmp_path / "scale.onnx"
    export_onnx(repository / "multi" / "1", dst, signature_name="scale")
    assert _opset(dst) == 17  # the default
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(_onnx_run(dst, x=x)["w"], call_tf(reference["multi"], "scale", x=x)["w"], atol=ATOL)


def test_static_batch(repository, tmp_path):
    dst = tmp_path / "tf1_static.onnx"
    export_onnx(repository / "tf1" / "1", dst, dynamic_batch=False)
    dims = onnx.load(str(dst)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3]


def test_unknown_signature_is_a_clear_error(repository, tmp_path):
    with pytest.raises(ModelLoadError, match="no signature 'nope'"):
        export_onnx(repository / "multi" / "1", tmp_path / "x.onnx", signature_name="nope")


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dlinfer-core")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "dlinfer.cli"]
    # Only the tf plugin: the command must not depend on what else is installed.
    env = {**os.environ, "DLINFER_DISABLE_PLUGIN_AUTOLOAD": "1", "DLINFER_PLUGINS": "tf"}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=240)


def test_convert_cli(repository, reference, call_tf, tmp_path):
    src = shutil.copytree(repository / "tf1" / "1", tmp_path / "tf1")
    proc = _cli("convert", str(src), "--to", "onnx", "--opset", "13")
    assert proc.returncode == 0, proc.stderr[-3000:]
    dst = src / "model.onnx"
    assert "validation: max abs error" in proc.stdout and str(dst) in proc.stdout
    assert _opset(dst) == 13
    x = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(_onnx_run(dst, x=x)["y"], call_tf(reference["tf1"], x=x)["y"], atol=ATOL)

    bad = _cli("convert", str(src), "--to", "onnx", "--option", "signature_name=nope", "-o", str(tmp_path / "b.onnx"))
    assert bad.returncode != 0
    assert "no signature 'nope'" in bad.stderr and "Traceback" not in bad.stderr
