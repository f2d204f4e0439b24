"""Plugins' HTTP middlewares (``dlinfer_http_middlewares``), checked before the app uses them."""

from __future__ import annotations

from typing import Any

from ..config import NodeConfig
from ..errors import PluginLoadError
from ..plugins import Plugins


def plugin_middlewares(plugins: Plugins, config: NodeConfig) -> list[Any]:
    """The middlewares every plugin returns, in hook-call order; an old-style middleware (without
    ``@web.middleware``) or a non-callable is refused at start with the plugin's name."""
    out = []
    kwargs = {"config": config}
    for impl in reversed(plugins.hook.dlinfer_http_middlewares.get_hookimpls()):  # pluggy's call order
        for mw in impl.function(*(kwargs[a] for a in impl.argnames)) or ():
            if not callable(mw) or getattr(mw, "__middleware_version__", None) != 1:
                raise PluginLoadError(
                    f"dlinfer_http_middlewares of plugin {impl.plugin_name!r} returned {mw!r}, "
                    "which is not a function decorated with @aiohttp.web.middleware"
                )
            out.append(mw)
    return out
