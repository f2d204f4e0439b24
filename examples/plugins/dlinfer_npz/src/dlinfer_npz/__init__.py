"""Example dlinfer plugin: ``.npz`` linear models and a failover balancer.

Registered through the ``dlinfer.plugins`` entry point ``npz``; it touches no
dlinfer internals, only the public API (``dlinfer.hookimpl``, ``Loader``,
``Runner``, ``TensorSpec``, errors).
"""

from __future__ import annotations

from dlinfer.api import hookimpl

from .balancer import FailoverBalancer
from .loader import NpzLoader

__all__ = ["FailoverBalancer", "NpzLoader"]


@hookimpl
def dlinfer_model_formats() -> list[type]:
    return [NpzLoader]


# dlinfer-lb declares this hook; optional, so .npz models are served where it is not installed.
@hookimpl(optionalhook=True)
def dlinfer_balancers() -> list[type]:
    return [FailoverBalancer]
