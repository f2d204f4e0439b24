"""What the TF-Serving REST and gRPC frontends share: finding the served
model of a signature, model status, signature metadata, classify/regress."""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any

import attrs
import numpy as np

from dlinfer.api import InferenceRequest, InferInput, InvalidInput, ModelNotFound
from dlinfer.api.frontend import Lease, ModelRepository, ServedModel, check_name

from ..loader import TFRunner
from ..signatures import CLASSIFY, DEFAULT_SIGNATURE, PREDICT, REGRESS, Signature, signature_def

#: dlinfer repository states -> TF-Serving ModelVersionStatus.State names.
STATES = {"READY": "AVAILABLE", "LOADING": "LOADING", "UNLOADING": "UNLOADING", "UNAVAILABLE": "END"}
#: Signature keys of classification/regression signatures (TF's signature_constants).
EXAMPLES_INPUT = "inputs"
CLASSES, SCORES, REGRESS_OUTPUT = "classes", "scores", "outputs"


_PROTOS = "tensorflow_serving.apis.get_model_status_pb2"


async def import_protos() -> None:
    """Import TensorFlow's protos off the event loop (importing TensorFlow takes seconds)."""
    if _PROTOS not in sys.modules:
        await asyncio.to_thread(_import_protos)


def _import_protos() -> None:
    from ..runtime import set_environment

    set_environment()
    importlib.import_module(_PROTOS)


def _signatures(model: ServedModel) -> dict[str, Signature]:
    """Every signature of a TensorFlow model; none for models of other backends."""
    return model.runner.signatures if isinstance(model.runner, TFRunner) else {}


def _signature(model: ServedModel) -> Signature | None:
    return model.runner.signature if isinstance(model.runner, TFRunner) else None


def signature_name_of(model: ServedModel) -> str:
    sig = _signature(model)
    return sig.name if sig is not None else DEFAULT_SIGNATURE


def for_signature(repository: ModelRepository, model: ServedModel, name: str) -> ServedModel:
    """The served model running signature ``name`` of ``model`` (empty: the one it serves).

    Other signatures of a SavedModel get their own ServedModel sharing the
    loaded TensorFlow objects, so their requests also pass the scheduler,
    queue limits and inference hooks.
    """
    current = signature_name_of(model)
    if not name or name == current:
        return model
    signatures = _signatures(model)
    if name not in signatures:
        raise InvalidInput(
            f"Serving signature name: {name!r} not found in signature def of model {model.name!r} "
            f"(signatures: {', '.join(sorted(signatures)) or current})"
        )
    runner = model.runner
    assert isinstance(runner, TFRunner)  # only TensorFlow models have named signatures
    served = runner.signature_models.get(name)
    if served is None:
        config = attrs.evolve(
            model.config, input=(), output=(), preprocess=(), postprocess=(), max_batch_size=None, parameters={}
        )
        served = ServedModel(
            model.name,
            model.version,
            config,
            runner.for_signature(name),
            repository.plugins,
            platform=model.platform,
        )
        # The model's observers (metrics, ...) watch this signature too, under the model's name and version.
        served.scheduler.observers.extend(model.scheduler.observers)
        runner.add_signature_model(name, served)
    return served


def signature_defs(model: ServedModel) -> dict[str, Any]:
    """SignatureDef protos of every signature of ``model`` (one built from its tensors if it has none)."""
    signatures = _signatures(model)
    if signatures:
        return {
            k: s.definition if s.definition is not None else signature_def(s.inputs, s.outputs, s.method_name)
            for k, s in signatures.items()
        }
    return {DEFAULT_SIGNATURE: signature_def(model.inputs, model.outputs)}


def version_status(repository: ModelRepository, name: str, version: str | None) -> list[dict[str, Any]]:
    """TF-Serving ModelVersionStatus entries (as dicts) for ``name`` and optionally one version."""
    check_name(name)
    rows = [r for r in repository.index() if r["name"] == name]
    if not rows:
        raise ModelNotFound(f"model {name!r} is not in the repository")
    if version is not None:
        rows = [r for r in rows if r.get("version") == str(int(version))]
        if not rows:
            raise ModelNotFound(f"model {name!r} has no version {version}")
    out = []
    for r in rows:
        failed = r["state"] == "UNAVAILABLE" and r["reason"] not in ("", "not loaded", "unloaded")
        out.append(
            {
                "version": r.get("version", "0"),
                "state": STATES.get(r["state"], "UNKNOWN"),
                "status": {"error_code": "UNKNOWN" if failed else "OK", "error_message": r["reason"]},
            }
        )
    return out


def _check_method(model: ServedModel, method: str) -> str:
    sig = _signature(model)
    actual = sig.method_name if sig is not None else PREDICT
    if actual != method:
        raise InvalidInput(
            f"signature {signature_name_of(model)!r} of model {model.name!r} cannot serve this request: "
            f"expected method_name {method}, the signature has {actual}"
        )
    names = [t.name for t in model.inputs]
    if names != [EXAMPLES_INPUT] or model.inputs[0].datatype != "BYTES":
        raise InvalidInput(f"signature {signature_name_of(model)!r} must take one string input {EXAMPLES_INPUT!r}")
    return EXAMPLES_INPUT


async def _run_examples(
    lease: Lease, model: ServedModel, examples: list[bytes], method: str, deadline_s: float | None
) -> dict[str, np.ndarray]:
    name = _check_method(model, method)
    if not examples:
        raise InvalidInput("the request has no examples")
    data = np.empty(len(examples), dtype=object)
    data[:] = examples
    request = InferenceRequest([InferInput(name, "BYTES", data.shape, data)])
    response = await lease.infer(request, deadline_s, model=model)
    return {o.name: o.data for o in response.outputs}


async def classify(
    lease: Lease, model: ServedModel, examples: list[bytes], deadline_s: float | None = None
) -> list[list[tuple[str, float]]]:
    """Per example, (label, score) pairs from a classification signature.

    A signature with only scores labels classes by index ("0", "1", ...); with
    only classes the scores are 0 (TF-Serving's behaviour).
    """
    out = await _run_examples(lease, model, examples, CLASSIFY, deadline_s)
    classes, scores = out.get(CLASSES), out.get(SCORES)
    if classes is None and scores is None:
        raise InvalidInput(f"classification signature of {model.name!r} has neither 'classes' nor 'scores'")
    ref = scores if scores is not None else classes
    assert ref is not None
    ref = ref.reshape(len(examples), -1)
    results = []
    for i in range(len(examples)):
        row = []
        for j in range(ref.shape[1]):
            label = classes.reshape(len(examples), -1)[i, j] if classes is not None else str(j)
            score = float(scores.reshape(len(examples), -1)[i, j]) if scores is not None else 0.0
            row.append((label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label), score))
        results.append(row)
    return results


async def regress(
    lease: Lease, model: ServedModel, examples: list[bytes], deadline_s: float | None = None
) -> list[float]:
    """One value per example from a regression signature."""
    out = await _run_examples(lease, model, examples, REGRESS, deadline_s)
    values = out.get(REGRESS_OUTPUT)
    if values is None or values.size != len(examples):
        raise InvalidInput(f"regression signature of {model.name!r} must return one {REGRESS_OUTPUT!r} per example")
    return [float(v) for v in values.reshape(-1)]
