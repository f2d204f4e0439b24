"""Thread settings: OpenMP/oneDNN environment for the process and thread pools per model.

Threading state is process-global. OpenMP runtimes (libgomp in PyTorch's wheels,
Intel's libiomp where present) and TensorFlow read ``OMP_NUM_THREADS``,
``KMP_BLOCKTIME``, ``KMP_AFFINITY`` and ``TF_ENABLE_ONEDNN_OPTS`` once, when they
start. So the ``[plugins.mkl]`` table of node.toml is applied in
``dlinfer_configure`` — after the node config is read and before any model (and so
any framework) loads — and only to variables the operator's environment does not
already set. What can still change once a framework runs (torch's intra-op pool
size, an ONNX Runtime or OpenVINO session's threads) the ``threads`` optimizer
sets per model.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import attrs

from dlinfer.api import ConfigError, OptimizeContext, Optimizer, Runner

log = logging.getLogger("dlinfer.mkl")


def physical_cores() -> int:
    """Cores this process may run on, counting SMT siblings once (hyper-threads share one core's
    vector units, so one math thread per physical core is the oneDNN/MKL recommendation)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("", str(cpu)))
    return max(len(cores), 1)


@attrs.frozen
class ThreadSettings:
    """``[plugins.mkl]`` of node.toml."""

    #: Math threads per operator (OMP_NUM_THREADS); 0: node's threads.intra_op, else physical cores.
    intra_op: int = 0
    #: Operators run in parallel (torch/TF inter-op pools).
    inter_op: int = 1
    #: Milliseconds an Intel OpenMP thread spins after a parallel region before sleeping.
    #: Low values give the cores back to the server's own threads between requests.
    kmp_blocktime: int = 1
    #: Intel OpenMP thread pinning; empty: leave unset.
    kmp_affinity: str = "granularity=fine,compact,1,0"
    #: Whether the table was present at all (nothing is changed for a node that did not ask).
    given: bool = False


def settings_from(config: Any) -> ThreadSettings:
    """Validate ``[plugins.mkl]``; a bad key names the file and the key."""
    table = dict(config.plugin_settings("mkl"))
    known = {f.name for f in attrs.fields(ThreadSettings)} - {"given"}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"{config.source}: plugins.mkl.{key} is not a setting (known: {', '.join(sorted(known))})"
            )
        if key == "kmp_affinity":
            valid, kind = isinstance(value, str), "a string"
        else:
            valid, kind = isinstance(value, int) and not isinstance(value, bool) and value >= 0, "an integer >= 0"
        if not valid:
            raise ConfigError(f"{config.source}: plugins.mkl.{key} must be {kind}, got {value!r}")
    if not table.get("intra_op"):
        table["intra_op"] = config.threads.intra_op or physical_cores()
    return ThreadSettings(**table, given="mkl" in config.plugins.settings)


def apply_process_settings(s: ThreadSettings, environ: Any = os.environ) -> dict[str, str]:
    """Set the OpenMP/oneDNN environment (only unset variables); returns what was set."""
    if not s.given:
        return {}
    frameworks = [m for m in ("torch", "tensorflow", "onnxruntime", "openvino") if m in sys.modules]
    if frameworks:
        log.warning(
            "[plugins.mkl]: %s already loaded; their thread pools keep the settings they started with",
            ", ".join(frameworks),
        )
    wanted = {
        "OMP_NUM_THREADS": str(s.intra_op),
        "KMP_BLOCKTIME": str(s.kmp_blocktime),
        "TF_ENABLE_ONEDNN_OPTS": "1",
        "TF_NUM_INTRAOP_THREADS": str(s.intra_op),
        "TF_NUM_INTEROP_THREADS": str(s.inter_op),
    }
    if s.kmp_affinity:
        wanted["KMP_AFFINITY"] = s.kmp_affinity
    applied = {k: v for k, v in wanted.items() if k not in environ}
    environ.update(applied)
    if applied:
        log.info("CPU thread settings: %s", " ".join(f"{k}={v}" for k, v in applied.items()))
    return applied


class Threads(Optimizer):
    """Size a model's math thread pool to the physical cores (or ``intra_op``).

    Options: ``intra_op`` (default: the model's ``threads``, else the node's ``[threads]
    intra_op``, else the physical cores divided among the model's ``instance_count``
    instances). ONNX Runtime and OpenVINO sessions are rebuilt with the new count; a torch
    model's worker threads take it before their next call (see ``dlinfer_torch.threads``).
    """

    name = "threads"
    #: A setting, not a variant: dlinfer-core optimize does not try it on its own.
    autotune = False

    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        n = int(ctx.options.get("intra_op", 0))
        if not n and (ctx.config.threads or ctx.node_config.threads.intra_op):
            n = ctx.threads()  # what the operator set, by the rule loaders follow
        # Otherwise one math thread per physical core, shared among the model's instances.
        n = n or max(1, physical_cores() // ctx.config.instance_count)
        platform = getattr(runner, "platform", "")
        if platform.startswith("pytorch"):
            import torch

            torch.set_num_threads(n)  # sizes a process-wide pool (non-OpenMP builds)
            if hasattr(runner, "threads"):
                runner.threads = n  # OpenMP: each worker thread sets its own team size
            return runner
        if platform == "onnxruntime_onnx":
            from dlinfer.api import onnx_file

            from .ort import ort_runner

            return ort_runner(
                onnx_file(ctx),
                ctx,
                threads=n,
                level=ctx.config.parameters.get("graph_optimization_level", "all"),
            )
        if platform == "openvino":
            return runner.recompiled(threads=n)  # type: ignore[attr-defined]
        raise ValueError(
            f"a {platform or type(runner).__name__} model's threads are fixed once its framework started; "
            "set threads in config.toml or [plugins.mkl] intra_op in node.toml"
        )
