"""Loaders for TensorFlow SavedModel folders and Keras ``.keras`` files.

Model config ``[parameters]`` understood here:

- ``signature_name`` (SavedModel): the signature served by V2 and by default
  over TF-Serving (default ``serving_default``); the others stay callable by
  name through the TF-Serving frontend.
- ``tags`` (SavedModel): the MetaGraph tags to load (default ``["serve"]``).
- ``filename`` (SavedModel): a SavedModel folder inside the version folder (default: the
  version folder itself, else ``model.savedmodel``, where a Triton repository has it).
- ``filename`` (Keras): the ``.keras`` file in the version folder (default:
  ``model.keras``, else the only ``.keras`` file).

TF1 SavedModels (``tf.compat.v1.saved_model.Builder``/``simple_save``) load
through the same TF2 API, which prunes each signature out of the graph.
Keras files load in Keras' safe mode (no Python code from the file) unless the
model and the node both set ``allow_pickle``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dlinfer.api import Loader, ModelConfig, ModelLoadError, Runner

from .runtime import import_tensorflow
from .signatures import DEFAULT_SIGNATURE, PREDICT, Signature, signature_def, tensor_spec

log = logging.getLogger("dlinfer.tf")

#: How long unloading waits for the served models of other signatures to drain.
SIGNATURE_CLOSE_TIMEOUT_S = 60.0


class TFRunner(Runner):
    """A loaded TensorFlow model serving one of its signatures.

    ``signatures`` holds every signature of the model; ``for_signature``
    gives a runner for another one that shares the loaded model.
    """

    def __init__(self, signatures: dict[str, Signature], selected: str, platform: str, holder: Any) -> None:
        self.signatures = signatures
        self.signature = signatures[selected]
        self.platform = platform
        self.inputs = list(self.signature.inputs)
        self.outputs = list(self.signature.outputs)
        self._holder = holder  # the loaded object: its variables live as long as it does
        #: Served models of the other signatures, made by the TF-Serving frontend on the event loop.
        self.signature_models: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.signature.call(inputs)

    def for_signature(self, name: str) -> TFRunner:
        """A runner for signature ``name`` sharing this model (closing it frees nothing)."""
        return TFRunner(self.signatures, name, self.platform, None)

    def add_signature_model(self, name: str, served: Any) -> None:
        """Keep the served model of signature ``name``; it is drained and closed with this runner."""
        self._loop = asyncio.get_running_loop()
        self.signature_models[name] = served

    def _close_signature_models(self) -> None:
        served_models = list(self.signature_models.items())
        self.signature_models.clear()
        if not served_models or self._loop is None or self._loop.is_closed():
            return
        for name, served in served_models:
            try:
                if _running_loop() is self._loop:
                    self._loop.create_task(served.close())
                else:  # the usual case: unloading closes runners in a worker thread
                    asyncio.run_coroutine_threadsafe(served.close(), self._loop).result(SIGNATURE_CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("closing signature %r of model %s failed: %s", name, served.name, exc)

    def close(self) -> None:
        self._close_signature_models()
        self.signatures = {}
        self.signature = None  # type: ignore[assignment]
        self._holder = None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _parameter(config: ModelConfig, key: str, default: Any, kind: type, word: str) -> Any:
    value = config.parameters.get(key, default)
    if not isinstance(value, kind) or (
        isinstance(value, list) and kind is list and not all(isinstance(v, str) for v in value)
    ):
        raise ModelLoadError(f"parameters.{key} must be {word}, got {value!r}")
    return value


def read_signature_defs(path: Path, tags: list[str]) -> dict[str, Any]:
    """The SignatureDef protos of the MetaGraph tagged ``tags`` in ``saved_model.pb``."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    except (OSError, DecodeError) as exc:
        raise ModelLoadError(f"{path.name}/saved_model.pb cannot be read: {exc}") from None
    for meta in saved.meta_graphs:
        if set(meta.meta_info_def.tags) == set(tags):
            return dict(meta.signature_def)
    found = [sorted(m.meta_info_def.tags) for m in saved.meta_graphs]
    raise ModelLoadError(f"saved_model.pb has no MetaGraph tagged {sorted(tags)} (tag sets: {found})")


def _function_signature(tf: Any, name: str, fn: Any, definition: Any) -> Signature:
    args = fn.structured_input_signature[1]
    inputs = tuple(tensor_spec(k, s.shape, s.dtype, "input") for k, s in args.items())
    outs = fn.structured_outputs
    if not isinstance(outs, dict):
        raise ModelLoadError(f"signature {name!r} does not return a dict of named outputs")
    outputs = tuple(tensor_spec(k, t.shape, t.dtype, "output") for k, t in outs.items())

    names = list(args)

    def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = fn(**{k: tf.convert_to_tensor(v) for k, v in feed.items()})
        return {k: v.numpy() for k, v in result.items()}

    def function(*tensors: Any) -> dict[str, Any]:
        return fn(**dict(zip(names, tensors, strict=True)))

    method = definition.method_name if definition is not None else PREDICT
    return Signature(name, method or PREDICT, inputs, outputs, call, function, definition)


#: Where a Triton model repository keeps a version's SavedModel.
TRITON_FOLDER = "model.savedmodel"


def savedmodel_folder(path: Path, config: ModelConfig) -> Path:
    """The SavedModel of a version folder: ``parameters.filename`` in it, the folder itself, or
    its ``model.savedmodel`` (Triton's layout)."""
    name = config.parameters.get("filename")
    if name is not None:
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ModelLoadError(f"parameters.filename must be a plain folder name, got {name!r}")
        candidates = [path / name]
    else:
        candidates = [path, path / TRITON_FOLDER]
    for folder in candidates:
        if (folder / "saved_model.pb").is_file():
            return folder
    where = f"{path.name}/{name}" if name is not None else f"version folder {path.name!r}"
    raise ModelLoadError(f"{where} has no saved_model.pb")


class SavedModelLoader(Loader):
    """SavedModel folders (``saved_model.pb`` + ``variables/``), TF2 and TF1."""

    name = "tf_savedmodel"
    formats = ("savedmodel",)

    @classmethod
    def detect(cls, path: Path) -> str | None:
        found = (path / "saved_model.pb").is_file() or (path / TRITON_FOLDER / "saved_model.pb").is_file()
        return "savedmodel" if found else None

    def load(self, config: ModelConfig, path: Path) -> Runner:
        selected = _parameter(config, "signature_name", DEFAULT_SIGNATURE, str, "a string")
        tags = _parameter(config, "tags", ["serve"], list, "an array of strings")
        path = savedmodel_folder(path, config)
        tf = import_tensorflow(self.threads(config), self.node_config.threads.inter_op)
        definitions = read_signature_defs(path, tags)
        try:
            root = tf.saved_model.load(str(path), tags=tags)
        except Exception as exc:  # TensorFlow raises many untyped errors for bad folders
            raise ModelLoadError(f"TensorFlow cannot load the SavedModel: {type(exc).__name__}: {exc}") from exc
        functions = dict(root.signatures)
        if selected not in functions:
            raise ModelLoadError(
                f"the SavedModel has no signature {selected!r} (parameters.signature_name); "
                f"its signatures are {sorted(functions) or 'none'}"
            )
        signatures = {}
        for name, fn in functions.items():
            try:
                signatures[name] = _function_signature(tf, name, fn, definitions.get(name))
            except ModelLoadError as exc:
                if name == selected:
                    raise
                log.warning("signature %r of %s is not served: %s", name, path, exc)
        return TFRunner(signatures, selected, "tensorflow_savedmodel", root)


def keras_file(path: Path, config: ModelConfig) -> Path:
    """The ``.keras`` file of a version folder."""
    name = config.parameters.get("filename")
    if name is None:
        if (path / "model.keras").is_file():
            return path / "model.keras"
        found = sorted(path.glob("*.keras"))
        if len(found) != 1:
            raise ModelLoadError(
                f"version folder {path.name!r} has {len(found)} .keras files; name one in parameters.filename"
            )
        return found[0]
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        raise ModelLoadError(f"parameters.filename must be a plain file name, got {name!r}")
    if not (path / name).is_file():
        raise ModelLoadError(f"version folder {path.name!r} has no {name}")
    return path / name


class KerasLoader(Loader):
    """Keras 3 ``.keras`` files, run as one traced ``tf.function``."""

    name = "tf_keras"
    formats = ("keras",)

    @classmethod
    def detect(cls, path: Path) -> str | None:
        return "keras" if any(path.glob("*.keras")) else None

    def load(self, config: ModelConfig, path: Path) -> Runner:
        f = keras_file(path, config)
        tf = import_tensorflow(self.threads(config), self.node_config.threads.inter_op)
        import keras

        try:
            model = keras.saving.load_model(f, compile=False, safe_mode=not config.allow_pickle)
            tensors = list(model.inputs)
            n_out = len(model.outputs)
        except Exception as exc:  # Keras raises ValueError/TypeError/... for bad or unsafe files
            raise ModelLoadError(f"{f.name}: Keras cannot load it: {type(exc).__name__}: {exc}") from exc
        out_names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(n_out)])
        specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in tensors]
        inputs = tuple(tensor_spec(t.name, tf.TensorShape(t.shape), tf.as_dtype(t.dtype), "input") for t in tensors)

        @tf.function(input_signature=specs)
        def forward(*xs: Any) -> dict[str, Any]:
            y = model(list(xs) if len(xs) > 1 else xs[0], training=False)
            if isinstance(y, dict):
                return {k: y[k] for k in out_names}
            return dict(zip(out_names, y if isinstance(y, list | tuple) else [y], strict=True))

        try:
            traced = forward.get_concrete_function()  # trace once, at load, not on the first request
        except Exception as exc:
            raise ModelLoadError(f"{f.name}: the model cannot be traced: {type(exc).__name__}: {exc}") from exc
        outputs = tuple(tensor_spec(k, t.shape, t.dtype, "output") for k, t in traced.structured_outputs.items())
        names = [t.name for t in inputs]

        def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = traced(*(tf.convert_to_tensor(feed[n]) for n in names))
            return {k: v.numpy() for k, v in result.items()}

        definition = signature_def(inputs, outputs)
        sig = Signature(DEFAULT_SIGNATURE, PREDICT, inputs, outputs, call, traced, definition)
        return TFRunner({DEFAULT_SIGNATURE: sig}, DEFAULT_SIGNATURE, "tensorflow_keras", (model, traced))
