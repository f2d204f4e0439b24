"""The hooks dlinfer-lb offers other plugins, declared through ``dlinfer_addhooks``."""

from __future__ import annotations

from dlinfer.api import catalogue, hookspec


@catalogue
@hookspec
def dlinfer_balancers() -> list[type]:
    """Return balancing strategy classes for the ``dlinfer-lb`` gateway.

    Each has ``name``, ``pick(model, candidates, request) -> node`` and
    ``observe(node, outcome, latency_s)`` (``outcome`` is ``"success"`` or
    ``"failure"``). The gateway makes one instance per model, passing
    ``policy=`` (the model's routing settings) when the constructor takes it;
    ``[plugins.lb] strategy`` or a model's own ``strategy`` names one. A plugin
    that also works without dlinfer-lb marks its implementation
    ``@hookimpl(optionalhook=True)``.
    """
