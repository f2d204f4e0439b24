"""dlinfer-core as a real process: serving the examples, models report, light startup."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

from dlinfer.testing import free_port, onnx_linear_model, write_model

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys, threading, urllib.request
from dlinfer.cli import main
HEAVY = ("torch", "tensorflow", "tensorrt", "keras", "jax")
port = int(sys.argv[1])
def probe():
    import time
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    print("HEAVY=" + ",".join(heavy), flush=True)
    import os, signal
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=probe, daemon=True).start()
sys.exit(main(sys.argv[2:]))
"""


def test_examples_serve_without_importing_frameworks(tmp_path: Path) -> None:
    """Every installed plugin is loaded, yet no framework is imported at start."""
    models = tmp_path / "models"
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_models.py"), str(models)], check=True, timeout=120)
    node_toml = tmp_path / "node.toml"
    node_toml.write_text((ROOT / "examples" / "node.toml").read_text())
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(port), "--config", str(node_toml), "--port", str(port),
         "--grpc-port", str(free_port())],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    heavy = next(ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY="))
    assert heavy == "HEAVY=", f"frameworks imported at startup: {heavy}"
    assert "model classifier version 1 ready" in proc.stderr


def test_serve_answers_curl_style_request(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_model(models, "classifier", 1, {"model.onnx": onnx_linear_model()})
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlinfer.cli", "--model-repository", str(models), "--port", str(port),
         "--grpc-port", str(free_port())],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if requests.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.05)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        doc = requests.post(f"{url}/v2/models/classifier/infer", json=body, timeout=10).json()
        probs = next(o for o in doc["outputs"] if o["name"] == "probs")
        assert probs["shape"] == [1, 3]
        assert abs(sum(probs["data"]) - 1.0) < 1e-5
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0


def test_models_command_reports_errors(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_model(models, "good", 1, {"model.onnx": onnx_linear_model()})
    write_model(models, "bad", 1, {"model.onnx": b"nope"})
    proc = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "models", "--model-repository", str(models), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["good"]["state"] == "READY"
    assert rows["bad"]["state"] == "UNAVAILABLE" and "ONNX Runtime cannot load it" in rows["bad"]["reason"]


def test_version_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "dlinfer.cli", "--version"], capture_output=True, text=True)
    assert out.stdout.strip().startswith("dlinfer ")
    out = subprocess.run([sys.executable, "-m", "dlinfer.cli", "--help"], capture_output=True, text=True)
    assert "examples:" in out.stdout and "plugins list" in out.stdout


def test_make_models_output_is_servable(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_models.py"), str(tmp_path)], check=True)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "classifier" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (probs,) = sess.run(["probs"], {"x": np.ones((2, 4), np.float32)})
    assert probs.shape == (2, 3)
