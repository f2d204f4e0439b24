"""Reading PyTorch model files into callable modules, one function per format.

Formats, and why each is (or is not) safe to load from a model repository:

- ``torchscript`` (``model.pt``, :func:`torch.jit.load`): a zip of TorchScript code
  and tensors; TorchScript is interpreted by libtorch, no Python objects are unpickled.
- ``torch_export`` (``model.pt2``, :func:`torch.export.load`): an ExportedProgram,
  a serialized FX graph plus weights; its signature names every input and output.
  torch unpickles some archive members without ``weights_only``, so the archive is
  checked first (:func:`check_program_archive`) unless pickles are allowed.
- ``pytorch_state_dict`` (``model.pt``/``model.pth``): tensors only, read with
  ``torch.load(weights_only=True)``, which refuses any pickled object that is not
  a tensor or a plain container; the architecture comes from ``parameters.model_class``.
- ``pytorch_pickle``: a whole ``nn.Module`` written by ``torch.save(model)``.
  Unpickling runs whatever code the file names, so a model file could run anything
  on the server; it is loaded only when both the model config and the node opt in.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from dlinfer.api import ModelConfig, ModelLoadError, TensorSpec

from .tensors import v2_of

FORMATS = ("torchscript", "torch_export", "pytorch_state_dict", "pytorch_pickle")

#: Platform names reported in model metadata (Triton's name for TorchScript).
PLATFORMS = {
    "torchscript": "pytorch_libtorch",
    "torch_export": "pytorch_export",
    "pytorch_state_dict": "pytorch_eager",
    "pytorch_pickle": "pytorch_eager",
}

_DEFAULT_FILES = {
    "torchscript": ("model.pt",),
    "torch_export": ("model.pt2",),
    "pytorch_state_dict": ("model.pt", "model.pth"),
    "pytorch_pickle": ("model.pt", "model.pth"),
}

_CLASS_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

PICKLE_OPT_IN = (
    "If you trust this model repository, set allow_pickle = true in the model's config.toml "
    "and repository.allow_pickle = true in node.toml"
)
PICKLE_REFUSED = "{file} holds pickled Python objects, not only tensors; unpickling it could run any code. " + (
    PICKLE_OPT_IN
)


def is_torchscript_archive(f: Path) -> bool:
    """Whether ``f`` is a TorchScript zip (it carries code; ``torch.save`` files do not)."""
    try:
        with zipfile.ZipFile(f) as z:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def detect_file(f: Path) -> str:
    """The format of one model file, by suffix and (for ``.pt``) the archive's member names."""
    if f.suffix == ".pt2":
        return "torch_export"
    return "torchscript" if is_torchscript_archive(f) else "pytorch_state_dict"


def detect_folder(path: Path) -> str | None:
    for name in ("model.pt2", "model.pt", "model.pth"):
        if (path / name).is_file():
            return detect_file(path / name)
    return None


def model_file(path: Path, config: ModelConfig, fmt: str) -> Path:
    """The model file: ``path`` itself, ``parameters.filename`` in it, or the format's default name."""
    if path.is_file():
        return path
    name = config.parameters.get("filename")
    if name is not None:
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ModelLoadError(f"parameters.filename must be a plain file name, got {name!r}")
        candidates: tuple[str, ...] = (name,)
    else:
        candidates = _DEFAULT_FILES[fmt]
    for c in candidates:
        if (path / c).is_file():
            return path / c
    raise ModelLoadError(f"version folder {path.name!r} has no {' or '.join(candidates)} for format {fmt!r}")


def resolve_device(name: str) -> Any:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device; CUDA only where torch sees a GPU."""
    import torch

    try:
        device = torch.device(name or "cpu")
    except RuntimeError as exc:
        raise ModelLoadError(f"device {name!r} is not a torch device (use 'cpu', 'cuda' or 'cuda:N'): {exc}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ModelLoadError(f"device {name!r}: only 'cpu' and 'cuda[:N]' are supported")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} asked for, but torch {torch.__version__} sees no CUDA GPU here")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", index)


@attrs.frozen
class LoadedModule:
    """A callable module and what its file says about its tensors (ExportedProgram only)."""

    module: Any
    format: str
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    #: Output names in the order the module returns them (dict keys or positions), when known.
    output_names: tuple[str, ...] | None = None


def load_module(
    fmt: str, f: Path, config: ModelConfig, device: Any, allow_pickle: bool, repository: Path | None = None
) -> LoadedModule:
    """Read ``f`` as ``fmt`` onto ``device``; every failure is a :class:`ModelLoadError` with the reason.

    ``repository``: the model repository, from which ``parameters.model_class`` may not import code.
    """
    if fmt not in FORMATS:
        raise ModelLoadError(f"format {fmt!r} is not a torch format ({', '.join(FORMATS)})")
    check_archive(f)
    try:
        if fmt == "torchscript":
            return LoadedModule(_load_torchscript(f, device), fmt)
        if fmt == "torch_export":
            return _load_exported(f, device, allow_pickle)
        return LoadedModule(_load_saved(fmt, f, config, device, allow_pickle, repository), fmt)
    except ModelLoadError:
        raise
    except Exception as exc:  # torch raises RuntimeError/ValueError/EOFError... for bad files
        raise ModelLoadError(f"{f.name}: cannot load it as {fmt}: {summarize(exc)}") from exc


def check_archive(f: Path) -> None:
    """Name a truncated or damaged file as such: torch's own errors for them are cryptic."""
    with f.open("rb") as fh:
        magic = fh.read(4)
    if not magic:
        raise ModelLoadError(f"{f.name} is empty")
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelLoadError(f"{f.name} is a damaged zip archive (truncated or corrupt?): {exc}") from None
        if bad is not None:
            raise ModelLoadError(f"{f.name} is a damaged zip archive: member {bad!r} fails its checksum")


def summarize(exc: BaseException) -> str:
    """One line saying what went wrong: TorchScript errors put the cause last, below a traceback."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if any(ln.startswith("Traceback of TorchScript") for ln in lines) else lines[0]
    if not re.match(r"^\w+(Error|Exception):", line):
        line = f"{type(exc).__name__}: {line}"
    return line if len(line) <= 500 else line[:500] + " ..."


def _load_torchscript(f: Path, device: Any) -> Any:
    import torch

    return torch.jit.load(str(f), map_location=device).eval()


def _load_exported(f: Path, device: Any, allow_pickle: bool) -> LoadedModule:
    import torch

    if not allow_pickle:
        check_program_archive(f)
    program = torch.export.load(str(f))
    inputs, outputs, names = program_specs(program)
    module = program.module()
    if device.type != "cpu":
        module = module.to(device)
    return LoadedModule(module, "torch_export", inputs, outputs, names)


#: Archive members of a .pt2 that torch reads without unpickling: metadata, JSON, raw tensor bytes.
_PT2_PLAIN = ("archive_format", "archive_version", "byteorder", "version", ".data/")


def check_program_archive(f: Path) -> None:
    """Refuse a .pt2 whose loading would unpickle anything beyond tensors.

    ``torch.export.load`` reads weights and constants flagged ``use_pickle`` with
    ``torch.load(weights_only=False)``, opaque constants with ``pickle.loads``, and
    retries sample inputs without ``weights_only`` when the safe load fails; archives
    may also carry compiled libraries. So every pickled member must load with
    ``weights_only=True`` here first, and members of unknown kinds are refused.
    """
    import io
    import json

    import torch

    with zipfile.ZipFile(f) as z:
        names = z.namelist()
        raw: set[str] = set()
        for name in names:
            if name.endswith(("_weights_config.json", "_constants_config.json")):
                folder = name.rsplit("/", 1)[0]
                config = json.loads(z.read(name)).get("config", {})
                raw |= {f"{folder}/{m['path_name']}" for m in config.values() if not m.get("use_pickle")}
        for name in names:
            inner = name.split("/", 1)[1] if "/" in name else name
            if name.endswith("/") or name in raw or name.endswith(".json") or inner.startswith(_PT2_PLAIN):
                continue
            if not inner.startswith(("data/weights/", "data/constants/tensor_", "data/sample_inputs/")):
                raise ModelLoadError(
                    f"{f.name}: member {inner!r} is not plain data (compiled code or pickled objects) "
                    f"and loading it could run any code. {PICKLE_OPT_IN}"
                )
            try:
                torch.load(io.BytesIO(z.read(name)), weights_only=True)
            except Exception:
                raise ModelLoadError(PICKLE_REFUSED.format(file=f"{f.name} (member {inner!r})")) from None


def program_specs(program: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], tuple[str, ...]]:
    """Inputs and outputs of an ExportedProgram from its signature: symbolic dims become -1."""
    from torch.export.graph_signature import InputKind

    sig = program.graph_signature
    user_inputs = [s.arg.name for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in program.graph.nodes}
    inputs = tuple(_spec_of(name, nodes[name].meta.get("val"), "input") for name in user_inputs)
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    user_out = set(sig.user_outputs)
    vals = [a.meta.get("val") for a in out_node.args[0] if getattr(a, "name", None) in user_out]
    names = _output_names(program.call_spec.out_spec, len(vals))
    outputs = tuple(_spec_of(n, v, "output") for n, v in zip(names, vals, strict=True))
    return inputs, outputs, names


def _spec_of(name: str, val: Any, kind: str) -> TensorSpec:
    import torch

    if not isinstance(val, torch.Tensor):
        raise ModelLoadError(f"{kind} {name!r} of the exported program is not a tensor ({type(val).__name__})")
    shape = tuple(d if isinstance(d, int) else -1 for d in val.shape)
    return TensorSpec(name, v2_of(val.dtype, f"{kind} {name!r}"), shape)


def _output_names(spec: Any, count: int) -> tuple[str, ...]:
    """Names for a pytree output spec: dict keys, ``output__i`` for sequences, ``output`` for one tensor."""
    kind = getattr(spec, "type", None)
    if kind is dict and len(spec.context) == count:
        return tuple(str(k) for k in spec.context)
    if count == 1 and kind not in (tuple, list):
        return ("output",)
    return tuple(f"output__{i}" for i in range(count))


def _load_saved(
    fmt: str, f: Path, config: ModelConfig, device: Any, allow_pickle: bool, repository: Path | None
) -> Any:
    """``torch.save`` files: a state_dict (weights only) or, when allowed, a pickled module."""
    import torch

    if fmt == "pytorch_pickle" and not allow_pickle:
        raise ModelLoadError(PICKLE_REFUSED.format(file=f.name))
    try:
        obj = torch.load(str(f), map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise ModelLoadError(PICKLE_REFUSED.format(file=f.name)) from None
        obj = torch.load(str(f), map_location=device, weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return obj.to(device).eval()
    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"{f.name} holds a {type(obj).__name__}, neither a state_dict nor a module")
    return _module_from_state_dict(obj, f, config, device, repository)


def _module_from_state_dict(
    state: Mapping[str, Any], f: Path, config: ModelConfig, device: Any, repository: Path | None
) -> Any:
    params = config.parameters
    key = params.get("state_dict_key")
    if key is not None:
        if key not in state or not isinstance(state[key], Mapping):
            raise ModelLoadError(f"{f.name}: parameters.state_dict_key {key!r} names no state_dict in the file")
        state = state[key]
    cls = import_model_class(params.get("model_class"), f, repository)
    kwargs = params.get("init_kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise ModelLoadError(f"parameters.init_kwargs must be a table, got {kwargs!r}")
    try:
        module = cls(**kwargs)
    except Exception as exc:
        raise ModelLoadError(f"{params['model_class']}(**{dict(kwargs)}) failed: {type(exc).__name__}: {exc}") from exc
    strict = params.get("strict", True)
    try:
        module.load_state_dict(state, strict=bool(strict))
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ModelLoadError(f"{f.name} does not fit {params['model_class']}: {detail}") from None
    return module.to(device).eval()


def import_model_class(spec: Any, f: Path, repository: Path | None = None) -> type:
    """The class named ``module:Class`` (importable on the server, e.g. an installed package).

    Code inside the model repository is refused before it is imported, and anything but an
    ``nn.Module`` subclass before it is called: writing model files must not be enough to
    run code on the server (as with pickles).
    """
    import torch

    if spec is None:
        raise ModelLoadError(
            f"{f.name} is a state_dict (weights only); set parameters.model_class = 'package.module:Class' "
            "(and parameters.init_kwargs) in config.toml to say which architecture they belong to"
        )
    if not isinstance(spec, str) or not _CLASS_RE.match(spec):
        raise ModelLoadError(f"parameters.model_class must look like 'package.module:Class', got {spec!r}")
    mod_name, _, qual = spec.partition(":")
    if repository is not None:
        _refuse_repository_code(mod_name, spec, repository)
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"parameters.model_class {spec!r} cannot be imported: {exc}") from None
    # Checked before anything calls it: any other class (subprocess:Popen, io:FileIO, ...)
    # would run its constructor with init_kwargs from the model config.
    if not isinstance(obj, type) or not issubclass(obj, torch.nn.Module):
        raise ModelLoadError(f"parameters.model_class {spec!r} is not a torch.nn.Module subclass")
    return obj


def _refuse_repository_code(mod_name: str, spec: str, repository: Path) -> None:
    top = mod_name.split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return  # the import below reports it
    if found is None:
        return
    places = [found.origin] if found.origin else []
    places += list(found.submodule_search_locations or [])
    root = repository.resolve()
    for place in places:
        if place and Path(place).resolve().is_relative_to(root):
            raise ModelLoadError(
                f"parameters.model_class {spec!r} would import code from the model repository; "
                "install the model's code as a package on the server instead"
            )
