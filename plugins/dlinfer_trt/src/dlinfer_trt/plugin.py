"""Entry point of the ``trt`` plugin: light to import, with or without a GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlinfer import hookimpl

if TYPE_CHECKING:
    from aiohttp import web


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


@hookimpl
def dlinfer_startup(app: web.Application) -> None:
    """Register the installed operator plugins before any model loads: an engine that uses
    them (a served ``model.plan``, a cached engine) only deserializes once they are."""
    from dlinfer.server.app import PLUGINS

    from .customops import register_installed

    register_installed(app[PLUGINS])
