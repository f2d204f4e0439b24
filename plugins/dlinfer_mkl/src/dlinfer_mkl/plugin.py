"""Entry point of the ``mkl`` plugin; stays light (frameworks load when an optimizer runs)."""

from __future__ import annotations

from typing import Any

from dlinfer.api import hookimpl


@hookimpl
def dlinfer_configure(config: Any) -> None:
    # Runs before any model loads, so the OpenMP/oneDNN settings reach the frameworks
    # before their thread pools exist (they read the environment once, at start-up).
    from .threads import apply_process_settings, settings_from

    apply_process_settings(settings_from(config))


@hookimpl
def dlinfer_optimizers() -> list[type]:
    from .ort import Int8, OnnxRuntime
    from .ov import OpenVino
    from .precision import Bf16
    from .threads import Threads
    from .torchscript import TorchScriptFreeze

    return [Threads, TorchScriptFreeze, OnnxRuntime, OpenVino, Bf16, Int8]
