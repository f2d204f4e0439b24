"""Each lifecycle and wrapper hook, exercised through a real node and a real CLI process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from aiohttp import web

from dlinfer import Runner, TensorSpec, hookimpl
from dlinfer.config import node_config_from_dict
from dlinfer.plugins import Plugins
from dlinfer.testing import RunningNode, free_port, node_config, onnx_linear_model, write_model


class Recorder:
    """A plugin that records every hook call it receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def dlinfer_configure(self, config: Any) -> None:
        self.calls.append(("configure", config.source))

    @hookimpl
    async def dlinfer_startup(self, app: web.Application) -> None:
        self.calls.append(("startup", None))

    @hookimpl
    def dlinfer_shutdown(self, app: web.Application) -> None:
        self.calls.append(("shutdown", None))

    @hookimpl
    def dlinfer_model_loaded(self, model: Any) -> None:
        self.calls.append(("loaded", (model.name, model.version)))

    @hookimpl
    def dlinfer_model_unloaded(self, name: str, version: int) -> None:
        self.calls.append(("unloaded", (name, version)))

    @hookimpl(wrapper=True)
    def dlinfer_infer(self, model: Any, inputs: dict[str, np.ndarray]) -> Any:
        outputs = yield
        self.calls.append(("infer", (model.name, sorted(outputs))))
        return outputs

    @hookimpl
    def dlinfer_routes(self, app: web.Application, repository: Any) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"models": [m.name for m in repository.loaded()]})

        app.router.add_get("/hello", hello)


class ConstantRunner(Runner):
    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("y", "FP32", (-1, 2))]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.full_like(inputs["x"], 7.0)}


class TakeOver:
    """Takes over loading of models named ``const*`` through dlinfer_load_model."""

    @hookimpl
    def dlinfer_load_model(self, config: Any, path: Path, node_config: Any) -> Runner | None:
        return ConstantRunner() if config.name.startswith("const") else None


def test_lifecycle_wrapper_routes_and_load_override(tmp_path: Path) -> None:
    write_model(tmp_path, "linear", 1, {"model.onnx": onnx_linear_model()})
    write_model(tmp_path, "const", 1, {"anything.bin": b"\0"})
    cfg = node_config(tmp_path)
    recorder = Recorder()
    plugins = Plugins(cfg)
    plugins.register(recorder, "recorder")
    plugins.register(TakeOver(), "takeover")
    plugins.load()
    with RunningNode(cfg, plugins) as node:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
        out = requests.post(f"{node.url}/v2/models/const/infer", json=body).json()["outputs"][0]
        assert out["data"] == [7.0, 7.0]
        assert requests.get(f"{node.url}/hello").json() == {"models": ["const", "linear"]}
        requests.post(f"{node.url}/v2/repository/models/linear/unload").raise_for_status()
    names = [c[0] for c in recorder.calls]
    assert names[0] == "configure" and names[1] == "startup" and names[-1] == "shutdown"
    assert ("loaded", ("const", 1)) in recorder.calls and ("loaded", ("linear", 1)) in recorder.calls
    assert ("infer", ("const", ["y"])) in recorder.calls
    assert ("unloaded", ("linear", 1)) in recorder.calls and ("unloaded", ("const", 1)) in recorder.calls


ADDOPTION_PLUGIN = '''
from dlinfer import hookimpl

@hookimpl
def dlinfer_addoption(parser):
    parser.add_argument("--greeting", default="none", help="a plugin-provided option")

@hookimpl
def dlinfer_options(options):
    import logging
    logging.getLogger("greeter").warning("greeting=%s", options.greeting)
'''


def test_addoption_and_options_reach_a_plugin(tmp_path: Path) -> None:
    pdir = tmp_path / "local_plugins"
    pdir.mkdir()
    (pdir / "greeter.py").write_text(ADDOPTION_PLUGIN)
    node_toml = tmp_path / "node.toml"
    node_toml.write_text("[plugins]\nplugins_dir = 'local_plugins'\n[repository]\npath = 'models'\n")
    (tmp_path / "models").mkdir()
    help_text = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "serve", "--config", str(node_toml), "--help"],
        capture_output=True, text=True, timeout=60,
    ).stdout
    assert "--greeting" in help_text and "a plugin-provided option" in help_text
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlinfer.cli", "--config", str(node_toml), "--port", str(port),
         "--grpc-port", str(free_port()), "--greeting", "hi"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(600):
            try:
                requests.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "greeting=hi" in err


def test_unavailable_plugin_is_listed_with_its_reason() -> None:
    class NeedsGpu:
        @hookimpl
        def dlinfer_unavailable(self) -> str | None:
            return "no CUDA GPU is visible"

    class Fine:
        @hookimpl
        def dlinfer_unavailable(self) -> str | None:
            return None

    plugins = Plugins(node_config_from_dict({}))
    plugins.register(NeedsGpu(), "needs_gpu", "dlinfer-gpuonly")
    plugins.register(Fine(), "fine", "dlinfer-fine")
    status = {p.name: (p.status, p.error) for p in plugins.load(entry_points=False).list()}
    assert status["needs_gpu"] == ("unavailable", "no CUDA GPU is visible")
    assert status["fine"] == ("loaded", "")


REGISTERING_PLUGIN = '''
import numpy as np
from dlinfer import ModelLoadError, Runner, TensorSpec, hookimpl

REGISTERED = []  # what a process-wide registry (TensorRT's plugin registry, say) would hold


class Echo(Runner):
    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("x", "FP32", (-1, 2))]

    def predict(self, inputs):
        return {"x": inputs["x"]}


@hookimpl
def dlinfer_plugins_loaded(plugins):
    REGISTERED.append(len(plugins.list()))


@hookimpl
def dlinfer_load_model(config, path, node_config):
    if not (path / "needs-registry").exists():
        return None
    if not REGISTERED:
        raise ModelLoadError("the registry was not set up before the model loaded")
    return Echo()
'''


def test_plugins_loaded_runs_before_models_load_in_cli_commands(tmp_path: Path) -> None:
    pdir = tmp_path / "local_plugins"
    pdir.mkdir()
    (pdir / "registering.py").write_text(REGISTERING_PLUGIN)
    write_model(tmp_path / "models", "echo", 1, {"needs-registry": b""})
    node_toml = tmp_path / "node.toml"
    node_toml.write_text("[plugins]\nplugins_dir = 'local_plugins'\n[repository]\npath = 'models'\n")
    done = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "models", "--config", str(node_toml), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"state": "READY"' in done.stdout


def test_plugins_loaded_reaches_plugins_registered_late() -> None:
    seen: list[Plugins] = []

    class Late:
        @hookimpl
        def dlinfer_plugins_loaded(self, plugins: Plugins) -> None:
            seen.append(plugins)

    plugins = Plugins(node_config_from_dict({})).load(entry_points=False)
    plugins.register(Late(), "late", "dlinfer-late")  # historic: called on registration
    assert seen == [plugins]
