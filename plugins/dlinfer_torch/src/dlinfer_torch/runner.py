"""Running a loaded torch module: tensor specs, inference and output naming.

Inputs go to ``forward`` positionally in the order of ``Runner.inputs``. Outputs
(one tensor, a tuple/list or a dict of tensors, nested or not) are flattened into
named tensors: dict keys name themselves, positions are ``output__0``, ``output__1``...
(a lone tensor is ``output``), unless config.toml's ``[[output]]`` names them in order.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dlinfer.api import InferenceError, ModelConfig, ModelLoadError, Runner, TensorSpec

from . import threads
from .modules import PLATFORMS, LoadedModule, summarize
from .tensors import to_numpy, to_tensor, torch_dtype, v2_of

log = logging.getLogger("dlinfer.torch")


def config_specs(config: ModelConfig, kind: str) -> list[TensorSpec]:
    """``[[input]]``/``[[output]]`` as full shapes: the batch dim (-1) is prepended when max_batch_size > 0."""
    batch = (-1,) if config.max_batch_size else ()
    return [TensorSpec(t.name, t.datatype, batch + tuple(t.shape)) for t in getattr(config, kind)]


def flatten_outputs(result: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Named tensors from whatever ``forward`` returned."""
    import torch

    if isinstance(result, torch.Tensor):
        return [(prefix or "output", result)]
    if isinstance(result, Mapping):
        items = [(str(k), v) for k, v in result.items()]
    elif isinstance(result, Sequence) and not isinstance(result, str | bytes):
        items = [(f"output__{i}", v) for i, v in enumerate(result)]
    else:
        raise InferenceError(f"the model returned a {type(result).__name__}; dlinfer serves tensors only")
    out: list[tuple[str, Any]] = []
    for name, value in items:
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(value, torch.Tensor):
            out.append((full, value))
        else:
            out.extend(flatten_outputs(value, full))
    return out


def forward_arg_names(module: Any) -> list[str] | None:
    """Parameter names of ``forward`` (TorchScript schema or Python signature), when they can be read."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:
        return [a.name for a in schema.arguments[1:]]
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    return [p.name for p in params]


class TorchRunner(Runner):
    """One torch module on one device, run under ``torch.inference_mode()``."""

    def __init__(self, loaded: LoadedModule, config: ModelConfig, device: Any, threads: int = 0) -> None:
        self.module = loaded.module
        #: Intra-op threads of the calling worker thread (0: leave torch's setting).
        self.threads = threads
        self.device = device
        self.format = loaded.format
        self.platform = PLATFORMS[loaded.format]
        self.inputs = self._input_specs(loaded, config)
        self._check_input_dtypes()
        self._renames: list[str] | None = None
        stated = config_specs(config, "output")
        if stated:
            self._renames = [t.name for t in stated]
            self.outputs = stated
            self._check_stated_outputs()
        elif loaded.outputs is not None:
            self.outputs = list(loaded.outputs)
        else:
            self.outputs = self._probe_outputs()

    # ----------------------------------------------------------------- specs

    def _input_specs(self, loaded: LoadedModule, config: ModelConfig) -> list[TensorSpec]:
        stated = config_specs(config, "input")
        if loaded.inputs is not None:
            if stated:
                # The program's signature fixes the order; config may only restate it.
                names = [t.name for t in loaded.inputs]
                unknown = [t.name for t in stated if t.name not in names]
                if unknown:
                    raise ModelLoadError(f"config.toml names inputs {unknown}; the exported program takes {names}")
            return list(loaded.inputs)
        args = forward_arg_names(self.module)
        if not stated:
            takes = f" (forward takes {', '.join(args)})" if args else ""
            raise ModelLoadError(
                f"a {loaded.format} model does not record its input shapes and dtypes: list them in "
                f"config.toml as [[input]] tables with name, datatype and shape{takes}"
            )
        if args is not None and len(stated) > len(args):
            raise ModelLoadError(f"config.toml lists {len(stated)} inputs but forward takes only {args}")
        if args is not None and all(t.name in args for t in stated):
            stated.sort(key=lambda t: args.index(t.name))
        return stated

    def _check_input_dtypes(self) -> None:
        for t in self.inputs:
            torch_dtype(t.datatype, f"input {t.name!r}")

    def _probe(self, why: str) -> list[tuple[str, Any]]:
        """Run the model once on zeros (batch 1): learns or checks its outputs, and warms it up."""
        try:
            return self._run({t.name: _zeros(t) for t in self.inputs})
        except Exception as exc:
            raise ModelLoadError(f"running the model once on zeros {why} failed: {summarize(exc)}") from exc

    def _check_stated_outputs(self) -> None:
        """``[[output]]`` must match what the model returns; checked at load where input shapes allow a run."""
        if any(-1 in t.shape[1:] for t in self.inputs):
            return  # sizes of inner dynamic dimensions cannot be guessed
        named = self._probe("(to check config.toml's [[output]])")
        try:
            renamed = self._rename(named)
        except InferenceError as exc:
            raise ModelLoadError(str(exc)) from None
        by_name = dict(renamed)
        for spec in self.outputs:
            actual = v2_of(by_name[spec.name].dtype, f"output {spec.name!r}")
            if actual != spec.datatype:
                raise ModelLoadError(
                    f"config.toml says output {spec.name!r} is {spec.datatype}, the model gives {actual}"
                )

    def _probe_outputs(self) -> list[TensorSpec]:
        """Learn output names, dtypes and ranks from a run on zeros."""
        batching = bool(self.inputs) and all(t.shape and t.shape[0] == -1 for t in self.inputs)
        dynamic_inner = any(-1 in t.shape[1:] for t in self.inputs)
        named = self._probe("(to learn its outputs; or list them in config.toml as [[output]] tables)")
        specs = []
        for name, t in named:
            dims = tuple(-1 if dynamic_inner else d for d in t.shape)
            if batching and dims:
                dims = (-1, *dims[1:])
            specs.append(TensorSpec(name, v2_of(t.dtype, f"output {name!r}"), dims))
        log.debug("model outputs learned by a probe run: %s", specs)
        return specs

    # -------------------------------------------------------------- inference

    def _run(self, inputs: dict[str, np.ndarray]) -> list[tuple[str, Any]]:
        import torch

        if self.threads:
            threads.use(self.threads)
        args = [to_tensor(np.asarray(inputs[t.name]), self.device) for t in self.inputs]
        with torch.inference_mode():
            result = self.module(*args)
        return flatten_outputs(result)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        named = self._run(inputs)
        if self._renames is not None:
            named = self._rename(named)
        return {name: to_numpy(t) for name, t in named}

    def _rename(self, named: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """Apply config's output names: by name when the model returned those names, else by position."""
        by_name = dict(named)
        assert self._renames is not None
        if all(n in by_name for n in self._renames):
            return [(n, by_name[n]) for n in self._renames]
        if len(named) != len(self._renames):
            raise InferenceError(
                f"the model returned {len(named)} outputs ({', '.join(by_name)}) but config.toml lists "
                f"{len(self._renames)} ({', '.join(self._renames)})"
            )
        return [(n, t) for n, (_, t) in zip(self._renames, named, strict=True)]

    def close(self) -> None:
        self.module = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def _zeros(spec: TensorSpec) -> np.ndarray:
    from dlinfer.api import numpy_dtype

    return np.zeros([1 if d == -1 else d for d in spec.shape], dtype=numpy_dtype(spec.datatype))
