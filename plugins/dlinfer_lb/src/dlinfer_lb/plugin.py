"""Entry point of the ``lb`` plugin.

It declares the ``dlinfer_balancers`` hook (:mod:`.hookspecs`) and always
offers the built-in balancing strategies through it. It changes a node only when ``[plugins.lb]`` says so:
``enabled = true`` turns the process into a gateway, and
``[plugins.lb.register]`` makes a node announce itself to gateways.
"""

from __future__ import annotations

from typing import Any

from dlinfer.api import NodeConfig, hookimpl

from .settings import load_settings


@hookimpl
def dlinfer_addhooks(pluginmanager: Any) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def dlinfer_configure(config: NodeConfig) -> None:
    load_settings(config)  # a bad [plugins.lb] table stops the node with file and key


@hookimpl
def dlinfer_balancers() -> list[type]:
    from .strategies import BUILTIN_STRATEGIES

    return list(BUILTIN_STRATEGIES)


@hookimpl(tryfirst=True)  # a gateway says so before the local frontends add their routes
def dlinfer_routes(app: Any, repository: Any) -> None:
    from dlinfer.api.frontend import CONFIG

    config = app[CONFIG]
    settings = load_settings(config)
    if settings.enabled:
        from .gateway import install

        install(app, repository, settings)
    if settings.register.gateways:
        from .register import Heartbeat
        from .settings import client_tls

        app.cleanup_ctx.append(Heartbeat(config, settings.register, client_tls(config, settings)).lifecycle)


@hookimpl
def dlinfer_openapi(spec: dict[str, Any], app: Any) -> None:
    from dlinfer.api.frontend import CONFIG

    if load_settings(app[CONFIG]).enabled:
        from .openapi import describe

        describe(spec, app)
