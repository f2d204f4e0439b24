"""Warm-up: calls on sample inputs before a model version takes traffic.

Frameworks initialise lazily: TensorFlow optimises a traced graph on its first call
(a Keras ResNet-50 answered its first request in ~300 ms, the next ones in ~35), OpenVINO and
ONNX Runtime size their buffers, oneDNN creates its primitives. Without a warm-up the
first clients of every newly loaded or hot-reloaded version pay for it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .errors import DlinferError, ModelLoadError
from .model import ModelConfig, Runner
from .optimize import batch_of, batches, model_samples

log = logging.getLogger("dlinfer.warmup")


def warm_up(runner: Runner, config: ModelConfig, model_dir: Path, label: str) -> None:
    """Call ``runner`` ``config.warmup`` times on each sample; a failing call fails the load.

    Samples are the ``optimize_samples`` files when the model has them (real inputs, at
    the shapes clients send), else one batch generated from the input specs, also cut to
    one row when the model batches (runtimes prepare per shape, and single requests are
    the ones whose latency shows).
    """
    if not config.warmup:
        return
    samples = model_samples(runner, config, model_dir)
    if not config.optimize_samples:
        samples = [batch_of(samples[0], 1), samples[0]] if batches(runner) else samples[:1]
    times = []
    for _ in range(config.warmup):
        for sample in samples:
            start = time.perf_counter()
            try:
                runner.predict(sample)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, DlinferError) else f"{type(exc).__name__}: {exc}"
                raise ModelLoadError(f"warm-up call failed: {reason}") from exc
            times.append(time.perf_counter() - start)
    log.info("%s warmed up: %d calls, first %.1f ms, last %.1f ms", label, len(times), times[0] * 1e3, times[-1] * 1e3)
