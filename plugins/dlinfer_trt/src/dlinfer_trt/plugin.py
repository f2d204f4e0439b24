"""Entry point of the ``trt`` plugin: light to import, with or without a GPU."""

from __future__ import annotations

from dlinfer import hookimpl


@hookimpl
def dlinfer_model_formats() -> list[type]:
    from .optimizer import PlanLoader

    return [PlanLoader]


@hookimpl
def dlinfer_optimizers() -> list[type]:
    from .optimizer import TrtOptimizer

    return [TrtOptimizer]


@hookimpl
def dlinfer_unavailable() -> str | None:
    from .availability import status

    gpu, reason = status()
    return None if gpu is not None else reason
