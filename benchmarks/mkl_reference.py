"""Reference points for ``benchmarks/mkl.py``: TensorFlow's own baselines and the CPU's ceiling.

Two questions the speed-up table alone does not answer:

- *Which TensorFlow?* Keras models can run eagerly (``model(x)``, the framework's eager
  baseline), as a compiled graph with oneDNN kernels (what dlinfer-tf and TF Serving run)
  or as a graph without oneDNN (``TF_ENABLE_ONEDNN_OPTS=0``: stock kernels, the "non-MKL
  build"). Each is measured in its own process, in process (no server cost).
- *How much is left?* The highest rate OpenVINO reaches on single 3x3 convolutions of
  ResNet-50's shapes is the practical ceiling of this CPU at each precision; a model's
  GFLOP/s against it says how far a faster variant could still go.

Run alone for one Keras baseline (used by mkl.py in a child process)::

    python benchmarks/mkl_reference.py keras --mode eager|graph [--stock] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: ResNet-50's 3x3 convolutions at batch 8 (channels, height = width), one per stage.
CONV_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` called back to back, after two warm-up calls."""
    fn()
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def conv_ceiling(threads: int, seconds: float = 2.0) -> dict[str, float]:
    """The best GFLOP/s OpenVINO reaches on ResNet-50's 3x3 convolutions, per precision."""
    import openvino as ov
    from openvino import opset13 as ops

    core, rng = ov.Core(), np.random.default_rng(0)
    best = {"f32": 0.0, "bf16": 0.0}
    for channels, size in CONV_SHAPES:
        x = rng.standard_normal((8, channels, size, size), dtype=np.float32)
        w = rng.standard_normal((channels, channels, 3, 3), dtype=np.float32)
        p = ops.parameter(list(x.shape), np.float32)
        conv = ops.convolution(p, ops.constant(w), [1, 1], [1, 1], [1, 1], [1, 1])
        flops = 2 * 8 * channels * channels * 9 * size * size
        model = ov.Model([conv], [p])
        for precision in best:
            hints = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
            request = core.compile_model(model, "CPU", {**hints, "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
            calls = rate(lambda r=request, x=x: r.infer([x]), seconds)
            best[precision] = max(best[precision], flops * calls / 1e9)
    return best


def model_gflops(name: str) -> float:
    """Floating-point operations per image (2 per multiply-add) of a benchmark model."""
    if name == "resnet50_keras":
        import keras
        import tensorflow as tf
        from tensorflow.python.profiler.model_analyzer import profile
        from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

        model = keras.applications.ResNet50(weights=None)
        graph = tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec([1, 224, 224, 3])).graph
        options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
        return profile(graph, options=options).total_float_ops / 1e9
    import torch
    from mkl_models import MobileNetV2, ResNet50
    from torch.utils.flop_counter import FlopCounterMode

    model = {"resnet50_torch": ResNet50, "mobilenetv2_torch": MobileNetV2}[name]().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops() / 1e9


def keras_baseline(mode: str, stock: bool, batches: tuple[int, ...], seconds: float, threads: int) -> dict[int, float]:
    """Rows/s of Keras ResNet-50 in a child process: ``eager`` calls or a ``graph`` (tf.function)."""
    cmd = [sys.executable, str(Path(__file__)), "keras", "--mode", mode, "--seconds", str(seconds)]
    cmd += ["--threads", str(threads), "--batches", ",".join(map(str, batches)), *(["--stock"] if stock else [])]
    done = subprocess.run(cmd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"keras baseline {mode} failed:\n{done.stderr[-3000:]}")
    return {int(b): r for b, r in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def _keras_main(args: argparse.Namespace) -> None:
    # TensorFlow reads the switch once, when it is imported.
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0" if args.stock else "1"
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    graph = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, 224, 224, 3])])
    call = graph if args.mode == "graph" else (lambda x: model(x, training=False))
    rows = {}
    for b in (int(s) for s in args.batches.split(",")):
        x = tf.constant(np.random.default_rng(0).standard_normal((b, 224, 224, 3), dtype=np.float32))
        rows[b] = b * rate(lambda x=x: call(x).numpy(), args.seconds)
    print(json.dumps(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["keras"])
    parser.add_argument("--mode", choices=["eager", "graph"], default="graph")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--stock", action="store_true", help="TensorFlow without its oneDNN kernels")
    _keras_main(parser.parse_args())
