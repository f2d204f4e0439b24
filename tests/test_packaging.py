"""Wheels of dlinfer and dlinfer-onnx install offline into a fresh venv and work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from dlinfer.testing import free_port, onnx_linear_model, write_model

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str | Path, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_wheels_install_offline_and_plugin_registers(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # Our two wheels, then every dependency as a wheel (from the local pip cache / registry).
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, ROOT, ROOT / "plugins/dlinfer_onnx")
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "-w", wheels, "--find-links", wheels, "dlinfer[onnx]")
    assert sorted(p.name.split("-")[0] for p in wheels.glob("dlinfer*.whl")) == ["dlinfer", "dlinfer_onnx"]

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py, core = venv / "bin" / "python", venv / "bin" / "dlinfer-core"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("DLINFER")}
    pip = (py, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels)

    # 1. Core alone: the node starts and says clearly that nothing claims the ONNX model.
    _run(*pip, "dlinfer", env=env)
    models = tmp_path / "models"
    write_model(models, "classifier", 1, {"model.onnx": onnx_linear_model()})
    port = free_port()
    node = subprocess.Popen(
        [core, "--model-repository", models, "--port", str(port), "--grpc-port", str(free_port())],
        stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        index = None
        for _ in range(600):
            try:
                index = requests.post(f"http://127.0.0.1:{port}/v2/repository/index", timeout=1).json()
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        assert index is not None, "node did not start"
        (row,) = index
        assert row["state"] == "UNAVAILABLE"
        assert "no installed loader claims the files" in row["reason"]
        assert "installed formats: none" in row["reason"] and "dlinfer[onnx]" in row["reason"]
    finally:
        node.terminate()
        _, err = node.communicate(timeout=30)
    assert node.returncode == 0
    assert "Traceback" not in err

    # 2. With the extra: the onnx plugin registers through its entry point.
    _run(*pip, "dlinfer[onnx]", env=env)
    listing = _run(core, "plugins", "list", env=env, cwd=tmp_path).stdout
    onnx_row = next(ln for ln in listing.splitlines() if ln.startswith("onnx "))
    assert onnx_row.split()[:4] == ["onnx", "dlinfer-onnx", "0.1.0", "loaded"]
    report = _run(core, "models", "--model-repository", models, env=env, cwd=tmp_path).stdout
    assert "classifier  1        READY" in report
    location = _run(py, "-c", "import dlinfer, dlinfer_onnx; print(dlinfer.__file__, dlinfer_onnx.__file__)", env=env)
    assert str(venv) in location.stdout and str(ROOT) not in location.stdout
