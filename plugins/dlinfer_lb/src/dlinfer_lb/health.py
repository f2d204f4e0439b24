"""Node health: active checks on a timer and passive outlier ejection.

Active: every ``interval_s`` each node is asked ``GET /v2/health/ready`` and
``POST /v2/repository/index``; the index tells which models are ready there
(model-aware routing), the thresholds keep one lost check from flapping a node.

Passive: the proxy reports every attempt. ``consecutive_failures`` gateway
failures in a row (connection errors, 502, 503, 504; not 500, which is most
often one bad request) eject the node for ``base_ejection_s * 2**(n-1)``,
capped at ``max_ejection_s``, unless ``max_ejection_percent`` of the nodes are
ejected already. After the ejection time the node takes traffic again, or
sooner when the active checks saw it fail and then pass again (a restart); a
node that then stays clean for ``max_ejection_s`` has its backoff reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
import orjson

from .membership import Membership, Node
from .settings import HealthSettings, OutlierSettings

log = logging.getLogger("dlinfer.lb")


class ActiveChecker:
    """Checks every node on a timer and records readiness and ready models."""

    def __init__(self, membership: Membership, settings: HealthSettings) -> None:
        self.membership = membership
        self.settings = settings

    async def check(self, node: Node) -> None:
        if node.session is None:
            return
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with node.session.get("/v2/health/ready", timeout=timeout) as resp:
                await resp.read()
                if resp.status != 200:
                    raise _CheckFailed(f"GET /v2/health/ready answered {resp.status}")
            async with node.session.post("/v2/repository/index", data=b"{}", timeout=timeout) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise _CheckFailed(f"POST /v2/repository/index answered {resp.status}")
            index = orjson.loads(body)
            if not isinstance(index, list):
                raise _CheckFailed("repository index is not a list")
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, _CheckFailed) as exc:
            self._failed(node, _reason(exc))
            return
        ready: dict[str, set[str]] = {}
        for row in index:
            if isinstance(row, dict) and row.get("state") == "READY" and isinstance(row.get("name"), str):
                ready.setdefault(row["name"], set()).add(str(row.get("version", "")))
        node.index = [row for row in index if isinstance(row, dict)]
        node.ready = ready
        self._passed(node)

    def _passed(self, node: Node) -> None:
        node.check_streak = max(0, node.check_streak) + 1
        node.last_check_error = ""
        # The first check a node ever passes admits it; after a failure, the threshold applies.
        if not node.healthy and (not node.ever_healthy or node.check_streak >= self.settings.healthy_threshold):
            log.info("node %s is healthy", node.url)
            node.healthy = node.ever_healthy = True
            now = node.healthy_since = time.monotonic()
            if node.ejected(now):
                # The checks saw the node go down and come back: the outage its ejection was for is over.
                log.info("node %s: ejection ended early, its health checks pass again", node.url)
                node.ejected_until = now
            node.consecutive_failures = 0

    def _failed(self, node: Node, reason: str) -> None:
        node.check_streak = min(0, node.check_streak) - 1
        node.last_check_error = reason
        if node.healthy and -node.check_streak >= self.settings.unhealthy_threshold:
            log.warning("node %s is unhealthy: %s", node.url, reason)
            node.healthy = False

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(n) for n in list(self.membership.nodes.values())))

    async def run(self, before_each: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            before_each()
            await self.check_all()


class _CheckFailed(Exception):
    pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "health check timed out"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, _CheckFailed) else str(exc)


class OutlierDetector:
    """Passive ejection from the outcome of real requests."""

    def __init__(self, membership: Membership, settings: OutlierSettings, on_eject: Callable[[Node], None]) -> None:
        self.membership = membership
        self.settings = settings
        self._on_eject = on_eject

    def success(self, node: Node) -> None:
        node.consecutive_failures = 0
        now = time.monotonic()
        if node.ejections and node.ejected_until and now - node.ejected_until > self.settings.max_ejection_s:
            node.ejections = 0

    def failure(self, node: Node, reason: str) -> None:
        node.consecutive_failures += 1
        node.last_error = reason
        now = time.monotonic()
        if node.consecutive_failures < self.settings.consecutive_failures or node.ejected(now):
            return
        nodes = self.membership.nodes.values()
        ejected = sum(1 for n in nodes if n.ejected(now))
        if (ejected + 1) * 100 > self.settings.max_ejection_percent * len(nodes):
            log.warning(
                "node %s: not ejected, %d%% of nodes are ejected already", node.url, self.settings.max_ejection_percent
            )
            return
        node.ejections += 1
        seconds = min(self.settings.max_ejection_s, self.settings.base_ejection_s * 2 ** (node.ejections - 1))
        node.ejected_until = now + seconds
        node.consecutive_failures = 0
        log.warning("node %s ejected for %.1f s after repeated failures: %s", node.url, seconds, reason)
        self._on_eject(node)
