"""Entry point of the ``torch`` plugin; stays light (torch loads with the first model)."""

from __future__ import annotations

from dlinfer.api import hookimpl


@hookimpl
def dlinfer_model_formats() -> list[type]:
    from .loader import TorchLoader

    return [TorchLoader]


@hookimpl
def dlinfer_processors() -> list[type]:
    from .processors import ArgMax, ImageDecode, TopK

    return [ImageDecode, TopK, ArgMax]


@hookimpl
def dlinfer_converters() -> list[type]:
    from .export import TorchToOnnx

    return [TorchToOnnx]
