"""Which nodes the gateway knows: a static list, a hot-reloaded node file and
self-registered nodes with a heartbeat TTL.

A node is identified by its base URL. The three sources are merged; a node
keeps its health and statistics for as long as any source lists it, so a
file reload or a heartbeat never resets what the gateway learnt about it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from dlinfer.api import ConfigError

from .settings import LbSettings, NodeEntry, read_node_file

log = logging.getLogger("dlinfer.lb")

STATIC, FILE, REGISTERED = "static", "file", "registered"


class Node:
    """One upstream node as the gateway sees it.

    Strategies read ``url`` (also as ``name``), ``weight``, ``outstanding`` and
    ``admitted_since()``; the health machinery owns the rest.
    """

    def __init__(self, url: str, weight: int = 1, grpc: str = "") -> None:
        self.url = self.name = url
        self.weight = weight
        #: ``host:port`` of the node's gRPC service, or empty.
        self.grpc = grpc
        self.sources: dict[str, int] = {}  # source -> weight it gave
        self.session: aiohttp.ClientSession | None = None
        #: Requests sent and not yet answered, over all models.
        self.outstanding = 0
        # Active health.
        self.ever_healthy = False
        self.healthy = False
        self.check_streak = 0  # > 0: consecutive passes; < 0: consecutive failures
        self.last_check_error = ""
        #: When the active checks last found the node healthy after it was not.
        self.healthy_since = 0.0
        #: Ready versions per model, from the node's repository index.
        self.ready: dict[str, set[str]] = {}
        #: The node's whole repository index (every state), for the aggregated index.
        self.index: list[dict[str, Any]] = []
        # Passive health (outlier ejection).
        self.consecutive_failures = 0
        self.ejections = 0  # ejections so far: the backoff exponent
        self.ejected_until = 0.0
        self.last_error = ""
        # Statistics for GET /v2/-/nodes.
        self.requests = 0
        self.failures = 0
        self.registered_until = 0.0

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def admitted(self, now: float) -> bool:
        """Takes traffic: passed its active checks and is not ejected."""
        return self.healthy and not self.ejected(now)

    def admitted_since(self) -> float:
        """When the node last began taking traffic (its checks passed again, or an ejection ended).

        Strategies forget what they learnt about a node before this moment: latencies and
        failures of a node that then went away say nothing about the one that came back.
        """
        return max(self.healthy_since, self.ejected_until)

    def serves(self, model: str, version: str | None) -> bool:
        versions = self.ready.get(model)
        if not versions:
            return False
        return version is None or version in versions

    def status(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "grpc": self.grpc,
            "weight": self.weight,
            "sources": sorted(self.sources),
            "healthy": self.healthy,
            "ejected": self.ejected(now),
            "ejected_for_s": round(max(0.0, self.ejected_until - now), 3),
            "ejections": self.ejections,
            "admitted": self.admitted(now),
            "models": {m: sorted(v) for m, v in sorted(self.ready.items())},
            "outstanding": self.outstanding,
            "requests": self.requests,
            "failures": self.failures,
            "last_error": self.last_error or self.last_check_error,
        }


def _version_number(version: str) -> int:
    return int(version) if version.isdigit() else 0


class Membership:
    """The merged node set. ``on_added``/``on_removed`` let the gateway open and
    close each node's connection pool."""

    def __init__(
        self,
        settings: LbSettings,
        node_file: Path | None,
        on_added: Callable[[Node], None],
        on_removed: Callable[[Node], Any],
    ) -> None:
        self.settings = settings
        self.node_file = node_file
        self.nodes: dict[str, Node] = {}
        self._on_added = on_added
        self._on_removed = on_removed
        self._file_stamp: tuple[int, int] | None = None
        self.node_file_error = ""

    # ------------------------------------------------------------- sources

    def _set_source(self, source: str, entries: Iterable[NodeEntry]) -> None:
        wanted = {e.url: e for e in entries}
        for url, entry in wanted.items():
            node = self.nodes.get(url)
            if node is None:
                node = self.nodes[url] = Node(url, entry.weight, entry.grpc)
                node.sources[source] = entry.weight
                self._on_added(node)
                log.info("node %s added (%s, weight %d)", url, source, entry.weight)
            node.sources[source] = entry.weight
            node.weight = max(node.sources.values())
            if entry.grpc:
                node.grpc = entry.grpc
        for node in list(self.nodes.values()):
            if source in node.sources and node.url not in wanted:
                del node.sources[source]
                if node.sources:
                    node.weight = max(node.sources.values())
                else:
                    self._remove(node, f"no longer listed ({source})")

    def _remove(self, node: Node, why: str) -> None:
        del self.nodes[node.url]
        log.info("node %s removed: %s", node.url, why)
        self._on_removed(node)

    def load_static(self) -> None:
        self._set_source(STATIC, self.settings.node_entries())

    def reload_file(self) -> bool:
        """Re-read the node file if it changed; True when it was applied.

        A file that cannot be read or is invalid is reported and the previous
        node list kept: a half-written edit must not drop every node.
        """
        if self.node_file is None:
            return False
        try:
            st = self.node_file.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError as exc:
            stamp = None
            error = f"{self.node_file}: cannot read: {exc.strerror}"
        else:
            if stamp == self._file_stamp:
                return False
            try:
                entries = read_node_file(self.node_file)
            except ConfigError as exc:
                error = str(exc)
            else:
                self._file_stamp = stamp
                self.node_file_error = ""
                self._set_source(FILE, entries)
                return True
        if error != self.node_file_error:
            log.error("node file not applied, keeping the previous list: %s", error)
        self.node_file_error = error
        self._file_stamp = stamp
        return False

    async def watch_file(self) -> None:
        """Poll the node file; applied edits need no restart."""
        while True:
            await asyncio.sleep(self.settings.node_file_poll_s)
            self.reload_file()

    def register(self, entry: NodeEntry, ttl_s: float) -> Node | None:
        """A heartbeat from a node; ``ttl_s == 0`` deregisters it."""
        node = self.nodes.get(entry.url)
        if ttl_s <= 0:
            if node is not None and REGISTERED in node.sources:
                del node.sources[REGISTERED]
                if not node.sources:
                    self._remove(node, "deregistered")
            return None
        registered = [n for n in self.nodes.values() if REGISTERED in n.sources and n.url != entry.url]
        others = [NodeEntry(n.url, n.sources[REGISTERED]) for n in registered]
        self._set_source(REGISTERED, [*others, entry])
        node = self.nodes[entry.url]
        node.registered_until = time.monotonic() + ttl_s
        return node

    def expire(self, now: float) -> None:
        """Drop registrations whose heartbeat is overdue."""
        for node in list(self.nodes.values()):
            if REGISTERED in node.sources and node.registered_until <= now:
                log.warning("node %s: registration expired (no heartbeat)", node.url)
                del node.sources[REGISTERED]
                if not node.sources:
                    self._remove(node, "registration expired")

    # ------------------------------------------------------------- queries

    def candidates(self, model: str, version: str | None, now: float) -> list[Node]:
        """Nodes that take traffic and report ``model`` (and ``version``) ready.

        Without a version, only the nodes that have the newest ready version: a
        request for "the latest" gets the same version whichever node answers,
        as it would from one node.
        """
        nodes = [n for n in self.nodes.values() if n.admitted(now) and n.serves(model, version)]
        if version is None and len(nodes) > 1:
            latest = [max(map(_version_number, n.ready[model])) for n in nodes]
            top = max(latest)
            nodes = [n for n, v in zip(nodes, latest, strict=True) if v == top]
        return nodes

    def knows(self, model: str, version: str | None = None) -> bool:
        """Whether any node has the model (and version) in its repository, in any state."""
        return any(
            row.get("name") == model and (version is None or row.get("version") == version)
            for n in self.nodes.values()
            for row in n.index
        )
