"""Peer servers for the serving benchmark: MLServer and TorchServe, each in its own venv.

The venvs are created on first use under ``--venv-dir`` (default
``~/.cache/dlinfer-bench``), never in the project's environment:

- MLServer 1.7 with ``uvloop==0.21.0`` (1.7 crashes at start with uvloop >= 0.22) and
  onnxruntime, serving the same ONNX file through a small custom runtime
  (``MLModel`` wrapping an ``InferenceSession`` with the same thread settings as
  dlinfer), with and without adaptive batching.
- TorchServe 0.12 with ``torch-model-archiver`` and ``pyyaml``, serving a TorchScript
  trace of the same model through a handler that reads raw float32 request bodies.
  Its workers need torch; the CPU wheel index is not reachable from every machine, so
  the venv can borrow the torch of the environment running the benchmark through a
  ``.pth`` entry appended *after* its own site-packages (nothing is installed there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from servers import wait_http

from dlinfer.testing import free_port

MLSERVER_PACKAGES = ["mlserver==1.7.1", "uvloop==0.21.0", "onnxruntime", "numpy<2.6"]
TORCHSERVE_PACKAGES = ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml", "numpy<2.6"]

MLSERVER_RUNTIME = '''
"""An MLServer runtime wrapping one ONNX Runtime session."""
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(self.settings.parameters.extra.get("threads", 0))
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.settings.parameters.uri, opts, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        y = self.session.run(None, {"x": x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)])
'''

TORCHSERVE_HANDLER = '''
"""A TorchServe handler for float32 tensors sent as raw bytes, one request per row."""
import json
import os

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler


class RawTensorHandler(BaseHandler):
    def initialize(self, context):
        super().initialize(context)
        with open(os.path.join(context.system_properties["model_dir"], "shape.json")) as f:
            self.chw = json.load(f)

    def preprocess(self, data):
        rows = [np.frombuffer(bytes(r.get("body") or r.get("data")), np.float32) for r in data]
        return torch.from_numpy(np.stack(rows).reshape(-1, *self.chw))

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return self.model(data)

    def postprocess(self, data):
        return [row.tolist() for row in data]
'''


def ensure_venv(root: Path, name: str, packages: list[str], borrow: list[str] = ()) -> Path:
    """The ``bin`` folder of venv ``name`` under ``root``, created with ``packages`` if missing."""
    venv = root / name
    marker = venv / ".installed"
    if not marker.exists() or marker.read_text() != "\n".join(packages):
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *packages], check=True)
        marker.write_text("\n".join(packages))
    if borrow:
        site = next((venv / "lib").glob("python*/site-packages"))
        (site / "zz_borrowed.pth").write_text("\n".join(borrow) + "\n")
    return venv / "bin"


class Server:
    """A peer server subprocess in its own process group."""

    proc: subprocess.Popen
    http: int
    grpc: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


class MLServer(Server):
    """MLServer serving ``models`` ({name: (onnx file, adaptive batching?)})."""

    def __init__(self, bin_dir: Path, folder: Path, models: dict[str, tuple[Path, bool]], threads: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "runtime.py").write_text(MLSERVER_RUNTIME)
        self.http, self.grpc = free_port(), free_port()
        settings = {
            "http_port": self.http,
            "grpc_port": self.grpc,
            "metrics_port": free_port(),
            "debug": False,
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        for name, (onnx_file, batching) in models.items():
            mdir = folder / name
            mdir.mkdir(exist_ok=True)
            shutil.copy(onnx_file, mdir / "model.onnx")
            ms: dict[str, Any] = {
                "name": name,
                "implementation": "runtime.OnnxRuntime",
                "parameters": {"uri": str(mdir / "model.onnx"), "extra": {"threads": threads}},
            }
            if batching:
                ms |= {"max_batch_size": 16, "max_batch_time": 0.002}
            (mdir / "model-settings.json").write_text(json.dumps(ms))
        log = (folder / "mlserver.log").open("wb")
        self.proc = subprocess.Popen(
            [str(bin_dir / "mlserver"), "start", str(folder)],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name in models:
            wait_http(f"http://127.0.0.1:{self.http}/v2/models/{name}/ready", self.proc, folder / "mlserver.log")


class TorchServe(Server):
    """TorchServe serving TorchScript ``models`` ({name: (.pt file, chw shape)}), one config for all."""

    def __init__(
        self,
        bin_dir: Path,
        folder: Path,
        models: dict[str, tuple[Path, tuple[int, ...]]],
        workers: int | None,
        batch_size: int = 1,
        omp_threads: int | None = None,
    ) -> None:
        store = folder / "store"
        store.mkdir(parents=True, exist_ok=True)
        (folder / "handler.py").write_text(TORCHSERVE_HANDLER)
        for name, (pt, chw) in models.items():
            if not (store / f"{name}.mar").exists():
                (folder / "shape.json").write_text(json.dumps(list(chw)))
                subprocess.run(
                    [
                        str(bin_dir / "torch-model-archiver"),
                        f"--model-name={name}",
                        "--version=1.0",
                        f"--serialized-file={pt}",
                        f"--handler={folder / 'handler.py'}",
                        f"--extra-files={folder / 'shape.json'}",
                        f"--export-path={store}",
                        "--force",
                    ],
                    check=True,
                )
        self.http, manage, metrics = free_port(), free_port(), free_port()
        props = [
            f"inference_address=http://127.0.0.1:{self.http}",
            f"management_address=http://127.0.0.1:{manage}",
            f"metrics_address=http://127.0.0.1:{metrics}",
            "disable_token_authorization=true",
            "enable_model_api=true",
            "install_py_dep_per_model=false",
            f"model_store={store}",
        ]
        (folder / "config.properties").write_text("\n".join(props) + "\n")
        # TMPDIR: TorchServe keeps a pid file there and refuses to start beside another instance's.
        env = {
            **os.environ,
            "LOG_LOCATION": str(folder / "logs"),
            "METRICS_LOCATION": str(folder / "logs"),
            "TMPDIR": str(folder),
        }
        if omp_threads:
            env["OMP_NUM_THREADS"] = str(omp_threads)
        log = (folder / "torchserve.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(bin_dir / "torchserve"),
                "--start",
                "--foreground",
                "--ncs",
                f"--ts-config={folder / 'config.properties'}",
                "--disable-token-auth",
            ],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        wait_http(f"http://127.0.0.1:{self.http}/ping", self.proc, folder / "torchserve.log")
        for name in models:
            # TorchServe starts one worker per core for models given at start; the API needs it said.
            n = workers or os.cpu_count() or 1
            q = f"url={name}.mar&model_name={name}&synchronous=true&batch_size={batch_size}&max_batch_delay=2"
            q += f"&initial_workers={n}"
            req = urllib.request.Request(f"http://127.0.0.1:{manage}/models?{q}", method="POST")
            with urllib.request.urlopen(req, timeout=300) as r:
                r.read()


def torchscript(onnx_name: str, path: Path) -> Path:
    """A TorchScript trace of benchmark model ``onnx_name`` (same architecture and seed)."""
    import torch
    from bench_models import SHAPES, torch_module

    model = torch_module(onnx_name)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, *SHAPES[onnx_name]))
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


def torch_site_packages() -> list[str]:
    """The site-packages holding the running interpreter's torch, for a peer venv to borrow."""
    import torch

    return [str(Path(torch.__file__).resolve().parents[1])]
