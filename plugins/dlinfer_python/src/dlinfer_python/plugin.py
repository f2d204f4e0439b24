"""Entry point of the ``python`` plugin: the loader, its settings, and each node's BLS link."""

from __future__ import annotations

import asyncio
from typing import Any

from dlinfer.api import NodeConfig, hookimpl
from dlinfer.api.frontend import CONFIG, STATE

from . import node


@hookimpl
def dlinfer_configure(config: NodeConfig) -> None:
    from .loader import settings

    settings(config)  # a bad [plugins.python] table stops the node at start, naming the key


@hookimpl
def dlinfer_model_formats() -> list[type]:
    from .loader import PythonLoader

    return [PythonLoader]


@hookimpl
def dlinfer_startup(app: Any) -> None:
    # Before the repository loads its models, so initialize() may already make BLS calls.
    node.attach(app[CONFIG], node.NodeLink(app[STATE], asyncio.get_running_loop()))


@hookimpl
def dlinfer_shutdown(app: Any) -> None:
    node.detach(app[CONFIG])
