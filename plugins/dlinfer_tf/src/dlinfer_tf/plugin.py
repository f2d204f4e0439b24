"""Entry point of the ``tf`` plugin.

Stays light: TensorFlow, tf2onnx and the TF-Serving protos load with the
first model, conversion or TF-Serving request, never at node start.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from dlinfer.api import hookimpl

#: Packages the plugin needs at run time (distribution dependencies, but an environment can lose them).
REQUIRED = ("tensorflow", "tensorflow_serving", "tf2onnx", "onnxruntime")


@hookimpl
def dlinfer_unavailable() -> str | None:
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        return f"missing packages: {', '.join(missing)}; reinstall dlinfer-tf"
    return None


@hookimpl
def dlinfer_model_formats() -> list[type]:
    from .loader import KerasLoader, SavedModelLoader

    return [SavedModelLoader, KerasLoader]


@hookimpl
def dlinfer_converters() -> list[type]:
    from .export import TFToOnnx

    return [TFToOnnx]


@hookimpl
def dlinfer_routes(app: Any, repository: Any) -> None:
    from dlinfer.api.frontend import STATE

    if app[STATE].forwarding:  # a gateway forwards TF-Serving's API to the nodes
        return
    from .serving.rest import add_routes

    add_routes(app, repository)


@hookimpl
def dlinfer_openapi(spec: dict[str, Any], app: Any) -> None:
    from .serving.openapi import describe

    describe(spec)


@hookimpl
def dlinfer_grpc_services(server: Any, state: Any) -> None:
    if state.forwarding:  # a gateway forwards TF-Serving's API to the nodes
        return
    from .serving.grpc import add_services

    add_services(server, state)
