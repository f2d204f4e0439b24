"""Entry point of the ``trt`` plugin: light to import, with or without a GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlinfer.api import hookimpl

if TYPE_CHECKING:
    import pluggy

    from dlinfer.api import Plugins


@hookimpl
def dlinfer_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


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
def dlinfer_plugins_loaded(plugins: Plugins) -> None:
    """Register the installed operator plugins before any model loads, in the node and in
    ``dlinfer-core models``/``optimize``: an engine that uses them (a served ``model.plan``,
    a cached engine) only deserializes once they are."""
    from .customops import register_installed

    register_installed(plugins)
