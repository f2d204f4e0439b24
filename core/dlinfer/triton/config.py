"""Triton's ``config.pbtxt``, read into dlinfer's :class:`~dlinfer.model.ModelConfig`.

A Triton user points dlinfer at their model repository and it serves it unchanged: the
protobuf text is parsed against dlinfer's own copy of the schema (``model_config.proto``),
then each field is mapped onto the setting of ``config.toml`` that means the same thing.
A field dlinfer cannot honour fails the load with the file, the field and why: a model that
silently behaved differently than its configuration says would be worse than one that does
not load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.message import Message

from ..errors import DlinferError, InvalidInput, ModelLoadError
from ..model import ModelConfig, model_config_from_dict
from . import model_config_pb2 as pb

#: The file name Triton reads a model's configuration from.
CONFIG_FILE = "config.pbtxt"

#: Triton platform → (dlinfer format, the model file Triton looks for in a version folder).
PLATFORMS: dict[str, tuple[str, str]] = {
    "onnxruntime_onnx": ("onnx", "model.onnx"),
    "tensorflow_savedmodel": ("savedmodel", "model.savedmodel"),
    "pytorch_libtorch": ("torchscript", "model.pt"),
    "tensorrt_plan": ("tensorrt_plan", "model.plan"),
    "python": ("python", "model.py"),
    "ensemble": ("ensemble", ""),
}
#: Triton backend → the platform it serves (``python`` is a backend with no platform).
BACKENDS = {
    "onnxruntime": "onnxruntime_onnx",
    "tensorflow": "tensorflow_savedmodel",
    "pytorch": "pytorch_libtorch",
    "tensorrt": "tensorrt_plan",
    "python": "python",
}
#: Formats whose dlinfer loader reads only Triton's default file name (no ``parameters.filename``).
FIXED_FILE = ("tensorrt_plan", "python")
#: Platforms Triton has and dlinfer has no loader for, and what to do instead.
REFUSED_PLATFORMS = {
    "tensorflow_graphdef": "dlinfer has no loader for frozen TensorFlow GraphDefs; export the model as a SavedModel",
}

#: Fields dlinfer does not support, with the reason a load error gives.
UNSUPPORTED = {
    "batch_input": "batch inputs (tensors the server derives from a batch) are not supported",
    "batch_output": "batch outputs (outputs scattered by input shape) are not supported",
    "optimization": "dlinfer optimises with its own pipeline: list optimizers in `optimize` of a config.toml "
    "(e.g. mkl, trt) instead",
    "cc_model_filenames": "per-compute-capability model files are not supported; name one file in "
    "default_model_filename",
    "metric_tags": "extra metric labels are not supported",
    "model_operations": "custom operation libraries are not loaded; serve a TensorRT engine built with the "
    "operator's plugin instead",
    "model_repository_agents": "repository agents are not supported",
    "model_metrics": "per-model metric settings are not supported",
    "runtime": "custom backend runtimes are not supported; dlinfer picks the loader from platform/backend",
    "is_shape_tensor": "shape tensors are not supported",
    "is_non_linear_format_io": "non-linear I/O formats are not supported",
    "allow_ragged_batch": "ragged batches are not supported: batched requests must agree on every dimension "
    "but the first",
    "optional": "optional inputs are not supported: every input must be in each request",
    "rate_limiter": "rate limiting is not supported",
    "secondary_devices": "secondary devices are not supported",
    "profile": "TensorRT optimisation profiles are chosen by dlinfer's TensorRT loader",
    "passive": "passive instances are not supported",
    "host_policy": "host policies are not supported",
    "preserve_ordering": "dlinfer answers each request as soon as its own batch is done",
    "priority_levels": "request priorities are not supported",
    "default_priority_level": "request priorities are not supported",
    "priority_queue_policy": "request priorities are not supported",
    "state": "implicit sequence state is not supported; keep the state in model inputs and outputs",
    "iterative_sequence": "iterative sequences are not supported",
    "model_namespace": "model namespaces are not supported: every model of a node has one name",
    "max_inflight_requests": "an ensemble's in-flight limit is not supported",
    "minimum_slot_utilization": "dlinfer runs a batch of a sequence's slots as soon as one request is ready",
    "max_queue_delay_microseconds": "dlinfer runs a batch of a sequence's slots as soon as one request is ready",
    "preferred_batch_size": "sequence batches are not sized by preference",
}


class TritonConfigError(ModelLoadError):
    """A ``config.pbtxt`` that cannot be served as it says."""


def read_triton_config(path: Path, model: str) -> ModelConfig:
    """Parse ``path`` (a model's ``config.pbtxt``) and map it onto dlinfer's model config."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TritonConfigError(f"{path}: cannot read it: {exc}") from exc
    message = pb.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise TritonConfigError(f"{path}: not a valid Triton model configuration: {exc}") from exc
    try:
        data = _Mapper(path, model).config(message)
        return model_config_from_dict(data, path)
    except TritonConfigError:
        raise
    except DlinferError as exc:
        raise TritonConfigError(str(exc)) from exc


def read_triton_config_json(text: str, model: str) -> ModelConfig:
    """A model configuration sent as JSON (Triton's JSON form of ``config.pbtxt``, as its model
    control takes it) mapped like a ``config.pbtxt``."""
    where = Path(f"<load request for {model}>")
    message = pb.ModelConfig()
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as exc:
        raise InvalidInput(f"load parameter 'config': not a valid Triton model configuration in JSON: {exc}") from None
    try:
        return model_config_from_dict(_Mapper(where, model).config(message), where)
    except DlinferError as exc:
        raise InvalidInput(f"load parameter 'config': {exc}") from None


class _Mapper:
    """One ``config.pbtxt`` → the dict a ``config.toml`` would hold."""

    def __init__(self, path: Path, model: str) -> None:
        self.path = path
        self.model = model

    def refuse(self, where: str, why: str) -> TritonConfigError:
        return TritonConfigError(f"{self.path}: {where}: {why}")

    def only(self, msg: Message, where: str, allowed: set[str]) -> None:
        """Refuse every field set in ``msg`` that is not ``allowed``."""
        for field, _value in msg.ListFields():
            if field.name not in allowed:
                why = UNSUPPORTED.get(field.name, "not supported by dlinfer")
                raise self.refuse(f"{where}{field.name}", why)

    # ---------------------------------------------------------------- fields

    def config(self, m: pb.ModelConfig) -> dict[str, Any]:
        self.only(
            m,
            "",
            {
                "name",
                "platform",
                "backend",
                "version_policy",
                "max_batch_size",
                "input",
                "output",
                "instance_group",
                "default_model_filename",
                "dynamic_batching",
                "sequence_batching",
                "ensemble_scheduling",
                "parameters",
                "model_warmup",
                "model_transaction_policy",
                "response_cache",
            },
        )
        if m.name and m.name != self.model:
            raise self.refuse("name", f"{m.name!r} does not match the model's folder {self.model!r}")
        if m.model_transaction_policy.decoupled:
            raise self.refuse(
                "model_transaction_policy.decoupled", "decoupled models (any number of responses) are not supported"
            )
        if m.response_cache.enable:
            raise self.refuse("response_cache.enable", "the response cache is not supported")
        if m.max_batch_size < 0:
            raise self.refuse("max_batch_size", f"must be 0 or more, got {m.max_batch_size}")
        data: dict[str, Any] = {"name": self.model}
        if m.HasField("max_batch_size"):  # absent: detected from the model, as Triton completes it
            data["max_batch_size"] = m.max_batch_size
        fmt, default_file = self.platform(m)
        if fmt:
            data["format"] = fmt
        data["parameters"] = {k: v.string_value for k, v in m.parameters.items()}
        self.model_file(m, fmt, default_file, data["parameters"])
        if m.HasField("version_policy"):
            data["version_policy"] = self.version_policy(m.version_policy)
        data["input"] = [self.input(t, f"input[{i}].") for i, t in enumerate(m.input)]
        data["output"] = [self.output(t, f"output[{i}].") for i, t in enumerate(m.output)]
        if m.instance_group:
            data.update(self.instance_group(m.instance_group, fmt, data["parameters"]))
        which = m.WhichOneof("scheduling_choice")
        if which == "dynamic_batching":
            data.update(self.dynamic_batching(m.dynamic_batching))
        elif which == "sequence_batching":
            data["sequence_batching"] = self.sequence_batching(m.sequence_batching)
        elif which == "ensemble_scheduling":
            data["ensemble"] = self.ensemble(m.ensemble_scheduling)
        if fmt == "ensemble" and which != "ensemble_scheduling":
            raise self.refuse("ensemble_scheduling", "an ensemble needs its steps")
        if m.model_warmup:
            data["warmup"] = self.warmup(m.model_warmup)
        return data

    def platform(self, m: pb.ModelConfig) -> tuple[str, str]:
        """dlinfer's format and Triton's default model file name; ``("", "")``: detect from the files."""
        platform = m.platform
        if platform == "python":  # a backend, not a platform, in Triton
            raise self.refuse("platform", 'write backend: "python" for the Python backend')
        if m.backend:
            if m.backend not in BACKENDS:
                raise self.refuse(
                    "backend",
                    f"no dlinfer loader serves Triton's {m.backend!r} backend (served: {', '.join(BACKENDS)})",
                )
            implied = BACKENDS[m.backend]
            if platform and platform != implied and not (m.backend == "tensorflow" and platform in REFUSED_PLATFORMS):
                raise self.refuse("platform", f"{platform!r} is not a platform of backend {m.backend!r}")
            platform = platform or implied
        if not platform:
            return "", ""
        if platform in REFUSED_PLATFORMS:
            raise self.refuse("platform", f"{platform!r}: {REFUSED_PLATFORMS[platform]}")
        if platform not in PLATFORMS:
            served = ", ".join(p for p in PLATFORMS if p != "python")
            raise self.refuse("platform", f"{platform!r} is not a platform dlinfer serves (served: {served})")
        return PLATFORMS[platform]

    def model_file(self, m: pb.ModelConfig, fmt: str, default: str, parameters: dict[str, Any]) -> None:
        """Tell the loader Triton's file name where it differs from the loader's own default."""
        name = m.default_model_filename
        if name and ("/" in name or "\\" in name or name.startswith(".")):
            raise self.refuse("default_model_filename", f"must be a plain file name, got {name!r}")
        if "filename" in parameters:
            raise self.refuse("parameters.filename", "use default_model_filename to name the model file")
        if fmt == "savedmodel":
            # Triton's SavedModel is a folder inside the version folder, not the version folder itself.
            parameters["filename"] = name or default
        elif name and fmt in FIXED_FILE and name != default:
            raise self.refuse("default_model_filename", f"dlinfer's {fmt} loader reads {default}, got {name!r}")
        elif name and name != default:
            parameters["filename"] = name

    def version_policy(self, p: pb.ModelVersionPolicy) -> dict[str, Any]:
        which = p.WhichOneof("policy_choice")
        if which == "latest":
            if p.latest.num_versions < 1:
                raise self.refuse("version_policy.latest.num_versions", "must be 1 or more")
            return {"latest": p.latest.num_versions}
        if which == "specific":
            if not p.specific.versions or any(v < 1 for v in p.specific.versions):
                raise self.refuse("version_policy.specific.versions", "must list positive versions")
            return {"specific": list(p.specific.versions)}
        return {"all": True} if which == "all" else {}

    def datatype(self, value: int, where: str) -> str:
        name = pb.DataType.Name(value)
        if name == "TYPE_INVALID":
            raise self.refuse(f"{where}data_type", "missing (TYPE_INVALID)")
        if name == "TYPE_BF16":
            raise self.refuse(f"{where}data_type", "BF16 tensors are not supported")
        return "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")

    def tensor(self, t: pb.ModelInput | pb.ModelOutput, where: str) -> dict[str, Any]:
        if not t.name:
            raise self.refuse(f"{where}name", "missing")
        doc: dict[str, Any] = {"name": t.name, "datatype": self.datatype(t.data_type, where), "shape": list(t.dims)}
        if t.HasField("reshape"):
            doc["reshape"] = list(t.reshape.shape)
        return doc

    def input(self, t: pb.ModelInput, where: str) -> dict[str, Any]:
        self.only(t, where, {"name", "data_type", "format", "dims", "reshape"})
        doc = self.tensor(t, where)
        if t.format:
            doc["format"] = pb.ModelInput.Format.Name(t.format).removeprefix("FORMAT_")
        return doc

    def output(self, t: pb.ModelOutput, where: str) -> dict[str, Any]:
        self.only(t, where, {"name", "data_type", "dims", "reshape", "label_filename"})
        doc = self.tensor(t, where)
        if t.label_filename:
            doc["labels_file"] = t.label_filename
        return doc

    def instance_group(self, groups: Any, fmt: str, parameters: dict[str, Any]) -> dict[str, Any]:
        if len(groups) > 1:
            raise self.refuse(
                "instance_group", "dlinfer runs all instances of a model on one device: give one instance_group"
            )
        g = groups[0]
        self.only(g, "instance_group[0].", {"name", "count", "kind", "gpus"})
        kind = pb.ModelInstanceGroup.Kind.Name(g.kind)
        if kind == "KIND_MODEL":
            raise self.refuse("instance_group[0].kind", "KIND_MODEL (the backend places instances) is not supported")
        if kind == "KIND_CPU" and g.gpus:
            raise self.refuse("instance_group[0].gpus", "a KIND_CPU group has no GPUs")
        if len(g.gpus) > 1:
            raise self.refuse("instance_group[0].gpus", "dlinfer runs a model on one GPU: list one")
        if g.count < 0:
            raise self.refuse("instance_group[0].count", f"must be 1 or more, got {g.count}")
        doc: dict[str, Any] = {"instance_count": g.count or 1}
        if kind == "KIND_GPU" or g.gpus:
            doc["device"] = f"cuda:{g.gpus[0]}" if g.gpus else "cuda"
            if fmt == "onnx" and "providers" not in parameters:
                # dlinfer's ONNX loader takes its device from the execution providers.
                cuda = ("CUDAExecutionProvider", {"device_id": g.gpus[0]}) if g.gpus else "CUDAExecutionProvider"
                parameters["providers"] = [cuda, "CPUExecutionProvider"]
        else:
            doc["device"] = "cpu"
        return doc

    def dynamic_batching(self, b: pb.ModelDynamicBatching) -> dict[str, Any]:
        where = "dynamic_batching."
        self.only(b, where, {"preferred_batch_size", "max_queue_delay_microseconds", "default_queue_policy"})
        if any(s < 1 for s in b.preferred_batch_size):
            raise self.refuse(f"{where}preferred_batch_size", "sizes must be 1 or more")
        doc: dict[str, Any] = {
            "dynamic_batching": {
                "preferred_batch_size": list(b.preferred_batch_size),
                "max_queue_delay_us": b.max_queue_delay_microseconds,
            }
        }
        q = b.default_queue_policy
        where += "default_queue_policy."
        self.only(
            q, where, {"timeout_action", "default_timeout_microseconds", "allow_timeout_override", "max_queue_size"}
        )
        if q.timeout_action == pb.ModelQueuePolicy.DELAY:
            raise self.refuse(f"{where}timeout_action", "DELAY is not supported: a request past its deadline fails")
        if q.max_queue_size:
            doc["max_queue_size"] = q.max_queue_size
        if q.default_timeout_microseconds:
            doc["timeout_ms"] = math.ceil(q.default_timeout_microseconds / 1000)
        return doc

    def sequence_batching(self, s: pb.ModelSequenceBatching) -> dict[str, Any]:
        where = "sequence_batching."
        self.only(s, where, {"max_sequence_idle_microseconds", "control_input", "direct", "oldest"})
        doc: dict[str, Any] = {"strategy": "oldest" if s.WhichOneof("strategy_choice") == "oldest" else "direct"}
        if s.max_sequence_idle_microseconds:
            doc["max_sequence_idle_microseconds"] = s.max_sequence_idle_microseconds
        self.only(s.direct, f"{where}direct.", set())
        self.only(s.oldest, f"{where}oldest.", {"max_candidate_sequences"})
        if s.oldest.max_candidate_sequences:
            doc["max_candidate_sequences"] = s.oldest.max_candidate_sequences
        controls = []
        for i, c in enumerate(s.control_input):
            for j, control in enumerate(c.control):
                at = f"{where}control_input[{i}].control[{j}]."
                entry: dict[str, Any] = {
                    "name": c.name,
                    "kind": pb.ModelSequenceBatching.Control.Kind.Name(control.kind),
                }
                for key in ("int32_false_true", "fp32_false_true", "bool_false_true"):
                    if getattr(control, key):
                        entry[key] = list(getattr(control, key))
                if control.data_type:
                    entry["data_type"] = self.datatype(control.data_type, at)
                controls.append(entry)
        if controls:
            doc["control_input"] = controls
        return doc

    def ensemble(self, e: pb.ModelEnsembling) -> dict[str, Any]:
        self.only(e, "ensemble_scheduling.", {"step"})
        steps = []
        for i, step in enumerate(e.step):
            where = f"ensemble_scheduling.step[{i}]."
            self.only(step, where, {"model_name", "model_version", "input_map", "output_map"})
            steps.append(
                {
                    "model": step.model_name,
                    # Triton writes -1 for the latest version; an absent version reads as 0 here.
                    "version": step.model_version or -1,
                    "input_map": dict(step.input_map),
                    "output_map": dict(step.output_map),
                }
            )
        return {"step": steps}

    def warmup(self, samples: Any) -> int:
        """dlinfer generates warm-up inputs from the model's input specs (zero or random data alike);
        the calls per sample are the largest ``count``."""
        for i, sample in enumerate(samples):
            for name, inp in sample.inputs.items():
                if inp.WhichOneof("input_data_type") == "input_data_file":
                    raise self.refuse(
                        f"model_warmup[{i}].inputs[{name!r}].input_data_file",
                        "warm-up data files are not read; put .npz samples in a folder named by "
                        "optimize_samples of a config.toml, or use zero_data or random_data",
                    )
        return max(max(s.count for s in samples), 1)
