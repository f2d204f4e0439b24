"""Wheels install offline into fresh venvs and register through their entry points."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from dlinfer.testing import free_port, onnx_linear_model, write_model

from .packaging_utils import ROOT, build_wheelhouse, clean_env, fresh_venv, offline_install, run


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Core, dlinfer-onnx and the example plugin as wheels, plus all their dependencies."""
    wheels = tmp_path_factory.mktemp("wheels")
    return build_wheelhouse(
        wheels,
        ROOT,
        ROOT / "plugins/dlinfer_onnx",
        ROOT / "examples/plugins/dlinfer_npz",
        requirements=("dlinfer[onnx]", "dlinfer-npz"),
    )


def _serve(core: Path, models: Path, cwd: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    node = subprocess.Popen(
        [core, "--model-repository", models, "--port", str(port), "--grpc-port", str(free_port())],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=cwd,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            requests.get(f"{url}/v2/health/ready", timeout=1)
            return node, url
        except requests.ConnectionError:
            time.sleep(0.05)
    node.kill()
    raise AssertionError("node did not start")


def _stop(node: subprocess.Popen) -> str:
    node.terminate()
    _, err = node.communicate(timeout=30)
    assert node.returncode == 0, err
    return err


@pytest.mark.slow
def test_core_alone_then_onnx_extra(wheelhouse: Path, tmp_path: Path) -> None:
    assert {"dlinfer", "dlinfer_onnx"} <= {p.name.split("-")[0] for p in wheelhouse.glob("dlinfer*.whl")}
    py, core = fresh_venv(tmp_path / "venv")

    # 1. Core alone: the node starts and says clearly that nothing claims the ONNX model.
    offline_install(py, wheelhouse, "dlinfer")
    models = tmp_path / "models"
    write_model(models, "classifier", 1, {"model.onnx": onnx_linear_model()})
    node, url = _serve(core, models, tmp_path)
    try:
        (row,) = requests.post(f"{url}/v2/repository/index", timeout=5).json()
        # The console's static files are package data of the wheel.
        for path, marker in (("/-/console", "<title>dlinfer console</title>"), ("/-/console/console.js", "use strict")):
            assert marker in requests.get(url + path, timeout=5).text
    finally:
        err = _stop(node)
    assert row["state"] == "UNAVAILABLE"
    assert "no installed loader claims the files" in row["reason"]
    assert "installed formats: none" in row["reason"] and "dlinfer[onnx]" in row["reason"]
    assert "Traceback" not in err

    # 2. With the extra: the onnx plugin registers through its entry point.
    offline_install(py, wheelhouse, "dlinfer[onnx]")
    listing = run(core, "plugins", "list", env=clean_env(), cwd=tmp_path).stdout
    onnx_row = next(ln for ln in listing.splitlines() if ln.startswith("onnx "))
    assert onnx_row.split()[:4] == ["onnx", "dlinfer-onnx", "0.1.0", "loaded"]
    report = run(core, "models", "--model-repository", models, env=clean_env(), cwd=tmp_path).stdout
    assert "classifier  1        READY" in report
    location = run(py, "-c", "import dlinfer, dlinfer_onnx; print(dlinfer.__file__, dlinfer_onnx.__file__)")
    assert str(tmp_path / "venv") in location.stdout and str(ROOT) not in location.stdout


@pytest.mark.slow
def test_third_party_plugin_wheel_serves_its_format(wheelhouse: Path, tmp_path: Path) -> None:
    """The example plugin, pip-installed beside core, serves a model: no core file touched."""
    py, core = fresh_venv(tmp_path / "venv")
    offline_install(py, wheelhouse, "dlinfer", "dlinfer-npz")
    listing = run(core, "plugins", "list", env=clean_env(), cwd=tmp_path).stdout
    row = next(ln for ln in listing.splitlines() if ln.startswith("npz "))
    assert row.split()[:4] == ["npz", "dlinfer-npz", "0.1.0", "loaded"]
    assert "dlinfer_balancers, dlinfer_model_formats" in row

    models = tmp_path / "models"
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    vdir = write_model(models, "tiny", 1)
    np.savez(vdir / "weights.npz", W=w)
    node, url = _serve(core, models, tmp_path)
    try:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
        doc = requests.post(f"{url}/v2/models/tiny/infer", json=body, timeout=10).json()
    finally:
        _stop(node)
    assert doc["outputs"][0]["data"] == (np.array([[1, 2, 3]], np.float32) @ w).ravel().tolist()
