"""OpenVINO: the model's ONNX form compiled for the CPU, f32 unless bf16 is asked for."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from dlinfer.api import OptimizeContext, Optimizer, Runner, TensorSpec, has_onnx, numpy_dtype, onnx_file

_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


class OpenVinoRunner(Runner):
    """One OpenVINO compiled model; one infer request per worker thread (requests are not thread-safe)."""

    platform = "openvino"

    def __init__(
        self,
        model: Any,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        precision: str = "f32",
        threads: int = 0,
        hint: str = "LATENCY",
    ) -> None:
        import openvino as ov

        self.model = model
        self.precision = precision
        self.threads = threads
        self.hint = hint
        props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads
        # The hint is always explicit: on CPUs with AMX/AVX512-BF16 OpenVINO's default
        # inference precision is bf16, which silently changes a f32 model's results.
        self.compiled = ov.Core().compile_model(model, "CPU", props)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self._out_ports = _match(self.compiled.outputs, [t.name for t in outputs], "output")
        in_ports = _match(self.compiled.inputs, [t.name for t in inputs], "input")
        self._in_names = {t.name: p.get_any_name() for t, p in zip(inputs, in_ports, strict=True)}
        self._dtypes = {t.name: numpy_dtype(t.datatype) for t in outputs}
        self._local = threading.local()

    def recompiled(self, precision: str | None = None, threads: int | None = None) -> OpenVinoRunner:
        """The same model compiled again with another precision or thread count."""
        return OpenVinoRunner(
            self.model,
            self.inputs,
            self.outputs,
            precision or self.precision,
            self.threads if threads is None else threads,
            self.hint,
        )

    def actual_precision(self) -> str:
        """The precision OpenVINO compiled for ("f32", "bf16"), read back from the compiled model."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({self._in_names[k]: np.ascontiguousarray(v) for k, v in inputs.items()})
        return {
            t.name: np.array(request.get_tensor(port).data, dtype=self._dtypes[t.name], copy=True)
            for t, port in zip(self.outputs, self._out_ports, strict=True)
        }

    def close(self) -> None:
        self.compiled = None
        self.model = None
        self._local = threading.local()


def _match(ports: list[Any], names: list[str], kind: str) -> list[Any]:
    """Ports in the order of ``names``: by tensor name when all match, else by position."""
    by_name = {n: p for p in ports for n in p.get_names()}
    if all(n in by_name for n in names):
        return [by_name[n] for n in names]
    if len(ports) != len(names):
        raise ValueError(f"the OpenVINO model has {len(ports)} {kind}s, the model as loaded {len(names)}")
    return list(ports)


def compile_onnx(f: Path, runner: Runner, ctx: OptimizeContext, precision: str) -> OpenVinoRunner:
    """Read an ONNX file into OpenVINO and compile it for the CPU with ``runner``'s tensor names."""
    import openvino as ov

    hint = str(ctx.options.get("performance_hint", "LATENCY")).upper()
    if hint not in _HINTS:
        raise ValueError(f"performance_hint must be one of {', '.join(_HINTS)}, got {hint!r}")
    threads = int(ctx.options.get("intra_op", 0)) or ctx.threads()
    model = ov.Core().read_model(str(f))
    return OpenVinoRunner(model, runner.inputs, runner.outputs, precision, threads, hint)


class OpenVino(Optimizer):
    """The model's ONNX form compiled by OpenVINO for this CPU, at f32.

    Options: ``performance_hint`` (LATENCY, THROUGHPUT; default LATENCY: one
    request at a time uses every core), ``intra_op`` (threads). For bf16, add the
    ``bf16`` optimizer after this one.
    """

    name = "openvino"

    def applies_to(self, runner: Runner, ctx: OptimizeContext) -> bool:
        return has_onnx(ctx)

    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        return compile_onnx(onnx_file(ctx), runner, ctx, "f32")
