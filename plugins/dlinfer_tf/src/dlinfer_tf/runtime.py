"""Importing TensorFlow with the node's settings.

TensorFlow's thread pools are process-wide and fixed when its runtime first
starts (the first op or model load); ``TF_ENABLE_ONEDNN_OPTS`` is read when
the module is imported. So both are applied here, once, right before the
first TensorFlow use, from the node's ``[threads]`` table (or the first
model's own ``threads``). A later model asking for other counts cannot get
them in this process: that is logged, not silently ignored.

``TF_NUM_INTRAOP_THREADS``/``TF_NUM_INTEROP_THREADS`` in the environment (set
by the operator, or by the mkl plugin from ``[plugins.mkl]``) win over the
config, as TensorFlow's own reading of them would.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType

log = logging.getLogger("dlinfer.tf")

_lock = threading.Lock()
_threads: tuple[int, int] | None = None


def set_environment() -> None:
    """Environment TensorFlow reads at import; explicit user settings win."""
    # oneDNN kernels are the fast CPU path; TF enables them on x86 by default,
    # but an inherited environment may not.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


def import_tensorflow(intra_op: int, inter_op: int) -> ModuleType:
    """``tensorflow``, with its thread pools set on first use.

    ``intra_op``/``inter_op`` of 0 leave TensorFlow's own choice (all cores).
    """
    global _threads
    set_environment()
    intra_op = _env_int("TF_NUM_INTRAOP_THREADS", intra_op)
    inter_op = _env_int("TF_NUM_INTEROP_THREADS", inter_op)
    import tensorflow as tf

    with _lock:
        if _threads is None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(intra_op)
                tf.config.threading.set_inter_op_parallelism_threads(inter_op)
            except RuntimeError:
                # The runtime already started (an embedding application or a
                # test used TensorFlow first): keep the pools it has.
                log.warning(
                    "TensorFlow was initialised before dlinfer could set its thread pools; "
                    "keeping intra_op=%d inter_op=%d",
                    tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads(),
                )
            _threads = (
                tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads(),
            )
            log.info("TensorFlow %s thread pools: intra_op=%d inter_op=%d", tf.__version__, *_threads)
        elif intra_op and _threads[0] and intra_op != _threads[0]:
            log.warning(
                "a model asks for %d intra-op threads, but TensorFlow's pools are process-wide "
                "and already run with %d; set [threads] in node.toml instead",
                intra_op,
                _threads[0],
            )
    return tf
