"""Loads ``<model>/<version>/model.py`` and serves its ``TritonPythonModel``.

Running a model.py runs arbitrary code with the server's rights, so the loader refuses
unless the node opts in with ``[plugins.python] allow_code = true`` (the same rule as
unpickling: safe by default, trusted repositories only).

Each of the model's ``instance_count`` instances gets its own ``TritonPythonModel``
object, initialized with the arguments Triton passes; a call to ``predict`` borrows an
idle one, so no object ever runs two ``execute`` calls at once. One ``predict`` call is
one request to ``execute`` (with dynamic batching, the batch the core formed).

``auto_complete_config`` is not called: a dlinfer model's config is validated before
its backend runs, so the tensors must be stated in the model's config, as with Triton's
``--strict-model-config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import itertools
import json
import queue
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import numpy as np

from dlinfer.api import (
    InferenceError,
    InvalidInput,
    Loader,
    ModelConfig,
    ModelLoadError,
    NodeConfig,
    Runner,
    TensorConfig,
    TensorSpec,
    build,
    numpy_dtype,
    setting,
)

from . import node, pb_utils

_module_ids = itertools.count()
#: sys.path is process-wide: a model.py importing its neighbours is executed under this lock.
_import_lock = threading.Lock()


@attrs.frozen
class PythonSettings:
    """``[plugins.python]`` in node.toml."""

    allow_code: bool = setting(
        False, "Run `model.py` files of the repository (Triton Python-backend models): trusted repositories only."
    )


def settings(config: NodeConfig) -> PythonSettings:
    """The node's ``[plugins.python]`` table, validated."""
    result: PythonSettings = build(PythonSettings, config.plugin_settings("python"), config.source, "plugins.python")
    return result


def triton_model_config(config: ModelConfig, name: str) -> dict[str, Any]:
    """``config`` in the shape of Triton's model configuration JSON (``args['model_config']``)."""
    batch = config.max_batch_size or 0

    def tensors(entries: tuple[TensorConfig, ...]) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                "dims": list(t.shape),
            }
            for t in entries
        ]

    doc: dict[str, Any] = {
        "name": name,
        "platform": "",
        "backend": "python",
        "max_batch_size": batch,
        "input": tensors(config.input),
        "output": tensors(config.output),
        "instance_group": [
            {
                "name": name,
                "kind": "KIND_GPU" if config.device.startswith("cuda") else "KIND_CPU",
                "count": config.instance_count,
            }
        ],
        "parameters": {k: {"string_value": str(v)} for k, v in config.parameters.items()},
    }
    if config.dynamic_batching is not None:
        doc["dynamic_batching"] = {
            "preferred_batch_size": list(config.dynamic_batching.preferred_batch_size),
            "max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_us,
        }
    return doc


def _spec(t: TensorConfig, batch: int) -> TensorSpec:
    return TensorSpec(t.name, t.datatype, ((-1,) if batch > 0 else ()) + tuple(t.shape))


def _import_model(path: Path, name: str) -> ModuleType:
    """Execute ``model.py`` as a fresh module (a reload gets the new code), its folder importable."""
    module_name = f"dlinfer_python_model_{next(_module_ids)}"
    spec = importlib.util.spec_from_file_location(module_name, path / "model.py")
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{name}: cannot import model.py")
    module = importlib.util.module_from_spec(spec)
    with _import_lock:
        before = set(sys.modules)
        sys.path.insert(0, str(path))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelLoadError(f"{name}/model.py failed to import: {type(exc).__name__}: {exc}") from exc
        finally:
            with contextlib.suppress(ValueError):  # model.py may have taken its folder off the path itself
                sys.path.remove(str(path))
            _forget_local_modules(path, set(sys.modules) - before)
    return module


def _forget_local_modules(path: Path, names: set[str]) -> None:
    """Drop the helper modules a model imported from its own folder from ``sys.modules``: the model
    keeps them, and another model's (or the next version's) helper of the same name is its own."""
    folder = path.resolve()
    for mod_name in names:
        file = getattr(sys.modules.get(mod_name), "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder):
            del sys.modules[mod_name]


class PythonRunner(Runner):
    """One version of a Python model: its ``TritonPythonModel`` objects, one per instance."""

    platform = "python"

    def __init__(self, name: str, config: ModelConfig, models: list[Any], link: node.NodeLink | None) -> None:
        batch = config.max_batch_size or 0
        self.name = name
        self.inputs = [_spec(t, batch) for t in config.input]
        self.outputs = [_spec(t, batch) for t in config.output]
        self._models = models
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for m in models:
            self._idle.put(m)
        self._link = link

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=self.name,
            inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()],
            requested_output_names=[t.name for t in self.outputs],
        )
        model = self._idle.get()
        try:
            responses = _call(self._link, model.execute, [request])
        finally:
            self._idle.put(model)
        if not isinstance(responses, list | tuple) or len(responses) != 1:
            got = len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            raise InferenceError(f"model {self.name!r}: execute() must return one response per request; got {got}")
        return self._outputs(responses[0])

    def _outputs(self, response: Any) -> dict[str, np.ndarray]:
        if not isinstance(response, pb_utils.InferenceResponse):
            raise InferenceError(
                f"model {self.name!r}: execute() returned a {type(response).__name__}, not a pb_utils.InferenceResponse"
            )
        error = response.error()
        if error is not None:
            message = f"model {self.name!r} returned an error: {error.message()}"
            raise InvalidInput(message) if error.code() == pb_utils.TritonError.INVALID_ARG else InferenceError(message)
        returned = {t.name(): t.as_numpy() for t in response.output_tensors()}
        outputs = {}
        for spec in self.outputs:
            if spec.name not in returned:
                raise InferenceError(
                    f"model {self.name!r}: execute() returned no output {spec.name!r} "
                    f"(it returned {sorted(returned) or 'none'})"
                )
            outputs[spec.name] = np.asarray(returned[spec.name]).astype(numpy_dtype(spec.datatype), copy=False)
        return outputs

    def close(self) -> None:
        models, self._models = self._models, []
        for m in models:
            finalize = getattr(m, "finalize", None)
            if callable(finalize):
                _call(self._link, finalize)


def _call(link: node.NodeLink | None, fn: Any, *args: Any) -> Any:
    """Call a model method with its node linked for BLS; an ``async def`` one runs to completion here."""
    token = node.CURRENT.set(link)
    try:
        if inspect.iscoroutinefunction(fn):
            return asyncio.run(fn(*args))
        return fn(*args)
    finally:
        node.CURRENT.reset(token)


class PythonLoader(Loader):
    """Triton Python-backend models: a version folder with ``model.py``."""

    name = "python"
    formats = ("python",)

    @classmethod
    def detect(cls, path: Path) -> str | None:
        return "python" if (path / "model.py").is_file() else None

    def load(self, config: ModelConfig, path: Path) -> Runner:
        name = config.name or path.parent.name
        if not settings(self.node_config).allow_code:
            raise ModelLoadError(
                f"{name}/{path.name}/model.py is Python code, and running it is off by default; if you trust "
                "this model repository, set allow_code = true under [plugins.python] in the node's config"
            )
        if not (path / "model.py").is_file():
            raise ModelLoadError(f"version folder {path.name!r} has no model.py")
        if not config.input or not config.output:
            raise ModelLoadError(
                f"{name}: a Python model's inputs and outputs must be stated in its config "
                "([[input]] and [[output]]); auto_complete_config is not used"
            )
        cls = getattr(_import_model(path, name), "TritonPythonModel", None)
        if not inspect.isclass(cls):
            raise ModelLoadError(f"{name}/model.py defines no class TritonPythonModel")
        link = node.link_for(self.node_config)
        model_config = triton_model_config(config, name)
        device_id = int(config.device.partition(":")[2] or 0) if config.device.startswith("cuda") else 0
        models: list[Any] = []
        try:
            for i in range(config.instance_count):
                model = cls()
                init = getattr(model, "initialize", None)
                if callable(init):
                    args = {
                        "model_config": json.dumps(model_config),
                        "model_instance_kind": "GPU" if config.device.startswith("cuda") else "CPU",
                        "model_instance_name": f"{name}_0_{i}",
                        "model_instance_device_id": str(device_id),
                        "model_repository": str(path.parent),
                        "model_version": path.name,
                        "model_name": name,
                    }
                    _call(link, init, args)
                models.append(model)
        except Exception as exc:
            runner = PythonRunner(name, config, models, link)
            runner.close()
            raise ModelLoadError(f"{name}: initialize() raised {type(exc).__name__}: {exc}") from exc
        return PythonRunner(name, config, models, link)
