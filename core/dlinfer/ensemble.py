"""Ensembles: a pipeline of other models of the node, wired by tensor names.

A model with ``format = "ensemble"`` runs no framework of its own. Its ``[[ensemble.step]]``
entries name other served models and map their tensors to the ensemble's: the ensemble's
inputs, its outputs, and intermediate tensors one step produces and later steps take.
The steps form a DAG, ordered at load; steps whose inputs are ready run concurrently.

The ensemble lives in core, not in a plugin, because each step is an ordinary request
through the node's data plane: it gets the step model's own admission, queue, deadline
and metrics, exactly as a client's request to that model would, and a Triton repository's
ensembles serve whichever backend plugins are installed. The ensemble itself runs on the
event loop (it only awaits its steps), so it holds no worker thread while they run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .datatypes import v2_datatype
from .errors import DeadlineExceeded, DlinferError, InferenceError, ModelLoadError
from .inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput
from .model import EnsembleStep, ModelConfig, Runner, TensorSpec

if TYPE_CHECKING:
    from .dataplane import DataPlane

#: The ``format`` (and metadata platform) of an ensemble.
ENSEMBLE = "ensemble"

#: The request parameters an ensemble passes on to its steps.
_SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


def _step_name(i: int, step: EnsembleStep) -> str:
    return f"step {i} (model {step.model!r})"


def plan(name: str, config: ModelConfig, on_disk: Callable[[str], bool]) -> list[list[int]]:
    """Check an ensemble's wiring and order its steps: a list of stages, each a list of step
    indexes whose inputs the stages before produce. Raises :class:`ModelLoadError` naming the
    step and tensor at fault. ``on_disk(model)``: whether a model is in the repository."""
    if config.ensemble is None or not config.ensemble.step:
        raise ModelLoadError(f"ensemble {name!r} has no steps; add [[ensemble.step]] entries")
    if not config.input or not config.output:
        raise ModelLoadError(f"ensemble {name!r} must state its [[input]] and [[output]] tensors")
    for key, value in (
        ("optimize", config.optimize),
        ("preprocess", config.preprocess),
        ("postprocess", config.postprocess),
        ("warmup", config.warmup),
        ("dynamic_batching", config.dynamic_batching),
    ):
        if value:
            raise ModelLoadError(f"ensemble {name!r}: {key} applies to its step models, not to an ensemble")
    steps = config.ensemble.step
    inputs = {t.name for t in config.input}
    producer: dict[str, int] = {}
    for i, step in enumerate(steps):
        where = _step_name(i, step)
        if step.model == name:
            raise ModelLoadError(f"ensemble {name!r}: {where} runs the ensemble itself")
        if not on_disk(step.model):
            raise ModelLoadError(f"ensemble {name!r}: {where}: model {step.model!r} is not in the repository")
        if not step.input_map or not step.output_map:
            raise ModelLoadError(f"ensemble {name!r}: {where} needs an input_map and an output_map")
        for tensor in step.output_map.values():
            if tensor in inputs:
                raise ModelLoadError(f"ensemble {name!r}: {where} writes tensor {tensor!r}, an ensemble input")
            if tensor in producer:
                other = _step_name(producer[tensor], steps[producer[tensor]])
                raise ModelLoadError(f"ensemble {name!r}: tensor {tensor!r} is produced by both {other} and {where}")
            producer[tensor] = i
    needs: list[set[int]] = []
    for i, step in enumerate(steps):
        deps = set()
        for model_input, tensor in step.input_map.items():
            if tensor in producer:
                deps.add(producer[tensor])
            elif tensor not in inputs:
                raise ModelLoadError(
                    f"ensemble {name!r}: {_step_name(i, step)} feeds its input {model_input!r} from tensor "
                    f"{tensor!r}, which is neither an ensemble input nor any step's output"
                )
        needs.append(deps)
    for t in config.output:
        if t.name not in producer:
            raise ModelLoadError(f"ensemble {name!r}: output {t.name!r} is not in any step's output_map")
    stages: list[list[int]] = []
    done: set[int] = set()
    while len(done) < len(steps):
        ready = [i for i in range(len(steps)) if i not in done and needs[i] <= done]
        if not ready:
            cycle = ", ".join(_step_name(i, steps[i]) for i in range(len(steps)) if i not in done)
            raise ModelLoadError(f"ensemble {name!r}: steps form a cycle through their tensors: {cycle}")
        stages.append(ready)
        done.update(ready)
    return stages


class EnsembleRunner(Runner):
    """An ensemble as the core serves it: ``run`` awaits its steps through the data plane."""

    platform = ENSEMBLE

    def __init__(self, name: str, config: ModelConfig, plane: DataPlane, on_disk: Callable[[str], bool]) -> None:
        self.name = name
        self.stages = plan(name, config, on_disk)
        assert config.ensemble is not None  # plan() refuses an ensemble without steps
        self.steps = config.ensemble.step
        batch = (-1,) if (config.max_batch_size or 0) > 0 else ()
        self.inputs = [TensorSpec(t.name, t.datatype, batch + t.shape) for t in config.input]
        self.outputs = [TensorSpec(t.name, t.datatype, batch + t.shape) for t in config.output]
        self.plane = plane

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise InferenceError(f"ensemble {self.name!r} runs on the event loop, not in a worker thread")

    async def run(
        self, inputs: dict[str, np.ndarray], deadline: float | None, parameters: Mapping[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the steps stage by stage; ``deadline`` (``time.monotonic``) bounds every step. As in
        Triton, each step gets the request's sequence (``sequence_id``, ``sequence_start``,
        ``sequence_end`` of ``parameters``), which a stateful step model needs."""
        sequence = {k: v for k, v in (parameters or {}).items() if k in _SEQUENCE_PARAMETERS}
        tensors: dict[str, tuple[str, np.ndarray]] = {k: (v2_datatype(v.dtype), v) for k, v in inputs.items()}
        for stage in self.stages:
            results = await asyncio.gather(*(self._step(i, tensors, deadline, sequence) for i in stage))
            for produced in results:
                tensors.update(produced)
        return {t.name: tensors[t.name][1] for t in self.outputs}

    async def _step(
        self, i: int, tensors: dict[str, tuple[str, np.ndarray]], deadline: float | None, sequence: dict[str, Any]
    ) -> dict[str, tuple[str, np.ndarray]]:
        step = self.steps[i]
        request = InferenceRequest(
            [InferInput(k, *_wire(tensors[t])) for k, t in step.input_map.items()],
            outputs=[RequestedOutput(k) for k in step.output_map],
            parameters=dict(sequence),
        )
        version = None if step.version == -1 else str(step.version)
        try:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded("deadline exceeded before the step ran")
            with self.plane.admit(step.model, version) as lease:
                response: InferenceResponse = await lease.infer(request, remaining)
        except DlinferError as exc:
            exc.message = f"ensemble {self.name!r} {_step_name(i, step)}: {exc.message}"
            exc.args = (exc.message,)
            raise
        produced = {o.name: (o.datatype, o.data) for o in response.outputs}
        return {step.output_map[k]: produced[k] for k in step.output_map}


def _wire(entry: tuple[str, np.ndarray]) -> tuple[str, tuple[int, ...], Any]:
    datatype, data = entry
    return datatype, data.shape, data
