"""Node side of self-registration: heartbeats to the gateways in ``[plugins.lb.register]``.

The node posts ``{"url", "weight", "ttl_s"}`` to ``POST /v2/-/nodes`` of each
gateway every ``interval_s`` with the shared token, and deregisters
(``ttl_s = 0``) when it shuts down, so gateways stop routing to it before it
goes away rather than after its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from dlinfer.api import NodeConfig

from .settings import ClientTls, RegisterSettings

log = logging.getLogger("dlinfer.lb")


class Heartbeat:
    """Announces this node to every configured gateway."""

    def __init__(self, config: NodeConfig, settings: RegisterSettings, tls: ClientTls) -> None:
        self.settings = settings
        self.tls = tls  # for gateways served over https:// (their CA; this node's certificate)
        scheme = "https" if config.server.tls.cert_file else "http"
        self.url = settings.url or f"{scheme}://{config.server.host}:{config.server.http_port}"
        self.grpc = settings.grpc
        if not self.grpc and "dlinfer.server.v2_grpc" not in config.plugins.disable:
            self.grpc = f"{urlsplit(self.url).hostname}:{config.server.grpc_port}"
        self._errors: dict[str, str] = {}

    async def _post(self, session: aiohttp.ClientSession, gateway: str, ttl_s: float) -> None:
        doc = {"url": self.url, "grpc": self.grpc, "weight": self.settings.weight, "ttl_s": ttl_s}
        headers = {"Authorization": f"Bearer {self.settings.token}"}
        try:
            async with session.post(f"{gateway}/v2/-/nodes", json=doc, headers=headers) as resp:
                text = await resp.text()
                error = "" if resp.status == 200 else f"answered {resp.status}: {text[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error != self._errors.get(gateway, ""):  # log changes, not every beat
            if error:
                log.warning("registration with gateway %s failed: %s", gateway, error)
            else:
                log.info("registered with gateway %s as %s", gateway, self.url)
        self._errors[gateway] = error

    async def _beat(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.gather(*(self._post(session, g, self.settings.ttl_s) for g in self.settings.gateways))
            await asyncio.sleep(self.settings.interval_s)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.settings.interval_s))
        connector = aiohttp.TCPConnector(ssl=self.tls.context)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            task = asyncio.create_task(self._beat(session), name="dlinfer-lb-heartbeat")
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.gather(*(self._post(session, g, 0) for g in self.settings.gateways))
