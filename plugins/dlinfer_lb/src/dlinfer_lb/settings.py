"""The ``[plugins.lb]`` table of node.toml, as frozen attrs classes.

Gateway mode (``enabled = true``) turns a dlinfer process into a gateway in
front of other nodes; ``[plugins.lb.register]`` makes a node announce itself
to a gateway. With neither, the plugin does nothing.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from dlinfer.api import ConfigError, NodeConfig, build, in_range, read_config_file

PREFIX = "plugins.lb"
#: Built-ins that answer the V2 API from the local repository; a gateway answers it itself.


@attrs.frozen
class NodeEntry:
    """One upstream node: its HTTP base address and its weight for weighted strategies."""

    url: str
    weight: int = attrs.field(default=1, validator=in_range(1, 10_000))
    #: ``host:port`` of the node's V2 gRPC service; empty: gRPC requests are not sent to it.
    grpc: str = ""


@attrs.frozen
class NodeFile:
    """A node file: ``nodes = ["http://...", {url = "http://...", weight = 2}]``."""

    nodes: tuple[str | NodeEntry, ...] = ()


@attrs.frozen
class HealthSettings:
    """``[plugins.lb.health]``: active checks of every node."""

    interval_s: float = attrs.field(default=2.0, validator=in_range(0.05, kind="a number"))
    timeout_s: float = attrs.field(default=1.0, validator=in_range(0.01, kind="a number"))
    #: Consecutive passed checks before an unhealthy node takes traffic again.
    healthy_threshold: int = attrs.field(default=2, validator=in_range(1, 100))
    #: Consecutive failed checks before a node stops taking traffic.
    unhealthy_threshold: int = attrs.field(default=2, validator=in_range(1, 100))


@attrs.frozen
class OutlierSettings:
    """``[plugins.lb.outlier]``: passive ejection from the results of real requests."""

    #: Consecutive gateway failures (connection errors, 502/503/504) that eject a node.
    consecutive_failures: int = attrs.field(default=3, validator=in_range(1, 1000))
    #: First ejection time; each further ejection doubles it, up to ``max_ejection_s``.
    base_ejection_s: float = attrs.field(default=5.0, validator=in_range(0.01, kind="a number"))
    max_ejection_s: float = attrs.field(default=300.0, validator=in_range(0.01, kind="a number"))
    #: Never eject more than this share of the nodes (a bad gateway network must not eject all).
    max_ejection_percent: int = attrs.field(default=50, validator=in_range(0, 100))


@attrs.frozen
class ModelPolicy:
    """``[plugins.lb.models.<name>]``: per-model overrides of the gateway defaults."""

    strategy: str | None = None
    deadline_ms: int | None = attrs.field(default=None, validator=in_range(1))
    max_retries: int | None = attrs.field(default=None, validator=in_range(0, 10))
    hash_header: str | None = None


@attrs.frozen
class RegisterSettings:
    """``[plugins.lb.register]``: this node announces itself to gateways (node side)."""

    gateways: tuple[str, ...] = ()
    token: str = attrs.field(default="", repr=False)
    #: The address gateways reach this node at; empty: ``http://<server.host>:<server.http_port>``.
    url: str = ""
    #: ``host:port`` of this node's gRPC service for gateways; empty: the url's host and
    #: ``server.grpc_port`` (none when the V2 gRPC built-in is disabled).
    grpc: str = ""
    weight: int = attrs.field(default=1, validator=in_range(1, 10_000))
    interval_s: float = attrs.field(default=5.0, validator=in_range(0.05, kind="a number"))
    #: How long a gateway keeps this node without a heartbeat.
    ttl_s: float = attrs.field(default=15.0, validator=in_range(0.1, kind="a number"))


@attrs.frozen
class NodeTlsSettings:
    """``[plugins.lb.tls]``: how the gateway checks nodes served over https://, and its own certificate."""

    #: PEM CA certificates that signed the nodes' certificates; empty: the system's trust store.
    ca_file: str = ""
    #: The gateway's client certificate and key, for nodes that require one (``server.tls.client_ca_file``).
    cert_file: str = ""
    key_file: str = ""


@attrs.frozen
class LbSettings:
    """The whole ``[plugins.lb]`` table."""

    enabled: bool = False
    #: Default strategy: swrr, least_outstanding, p2c, consistent_hash (or a plugin's).
    strategy: str = "swrr"
    nodes: tuple[str | NodeEntry, ...] = ()
    #: A TOML file with ``nodes = [...]`` like the key above, re-read when it changes.
    node_file: str = ""
    node_file_poll_s: float = attrs.field(default=2.0, validator=in_range(0.05, kind="a number"))
    #: Bearer token nodes must send to ``POST /v2/-/nodes``; empty: registration is off.
    registration_token: str = attrs.field(default="", repr=False)
    deadline_ms: int = attrs.field(default=30_000, validator=in_range(1))
    #: Retries to other nodes per request (connection errors, 503, 429).
    max_retries: int = attrs.field(default=2, validator=in_range(0, 10))
    #: Retries may add at most this share of extra load, plus ``min_retries_per_s``.
    retry_budget: float = attrs.field(default=0.2, validator=in_range(0, 10, kind="a number"))
    min_retries_per_s: float = attrs.field(default=10.0, validator=in_range(0, kind="a number"))
    #: Request header whose value consistent hashing keys on.
    hash_header: str = "x-dlinfer-hash-key"
    #: Bounded loads: no node takes more than this factor of the mean outstanding requests.
    hash_balance: float = attrs.field(default=1.25, validator=in_range(1.0, kind="a number"))
    #: Peak-EWMA decay time of the p2c strategy.
    ewma_decay_s: float = attrs.field(default=10.0, validator=in_range(0.01, kind="a number"))
    #: Pooled connections per node.
    max_connections: int = attrs.field(default=64, validator=in_range(1, 10_000))
    health: HealthSettings = HealthSettings()
    outlier: OutlierSettings = OutlierSettings()
    models: dict[str, ModelPolicy] = attrs.field(factory=dict)
    register: RegisterSettings = RegisterSettings()
    tls: NodeTlsSettings = NodeTlsSettings()

    def node_entries(self) -> list[NodeEntry]:
        return [NodeEntry(n) if isinstance(n, str) else n for n in self.nodes]


@attrs.frozen
class RoutePolicy:
    """A model's effective policy: its overrides over the gateway defaults."""

    model: str
    strategy: str
    deadline_s: float
    max_retries: int
    hash_header: str
    hash_balance: float
    ewma_decay_s: float


def policy_for(settings: LbSettings, model: str) -> RoutePolicy:
    p = settings.models.get(model, ModelPolicy())
    return RoutePolicy(
        model=model,
        strategy=p.strategy or settings.strategy,
        deadline_s=(p.deadline_ms or settings.deadline_ms) / 1000,
        max_retries=settings.max_retries if p.max_retries is None else p.max_retries,
        hash_header=p.hash_header or settings.hash_header,
        hash_balance=settings.hash_balance,
        ewma_decay_s=settings.ewma_decay_s,
    )


def check_url(url: str, where: str) -> str:
    """An http(s) base address without path, query or fragment; trailing slash removed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(
            f"{where}: expected an http:// or https:// base address like 'http://10.0.0.5:8000', got {url!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: expected a base address with no query or fragment, got {url!r}")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ConfigError(f"{where}: expected a port from 1 to 65535, got {url!r}") from None
    return url.rstrip("/")


def check_target(target: str, where: str) -> str:
    """A gRPC ``host:port`` target."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in target:
        raise ConfigError(f"{where}: expected host:port like '10.0.0.5:8001', got {target!r}")
    return target


def _check_nodes(entries: list[NodeEntry], where: str) -> list[NodeEntry]:
    return [
        attrs.evolve(
            e,
            url=check_url(e.url, f"{where}[{i}].url"),
            grpc=check_target(e.grpc, f"{where}[{i}].grpc") if e.grpc else "",
        )
        for i, e in enumerate(entries)
    ]


def load_settings(config: NodeConfig) -> LbSettings:
    """Validate ``[plugins.lb]``; errors name the file and the dotted key."""
    data = config.plugin_settings("lb")
    settings: LbSettings = build(LbSettings, data, config.source, prefix=PREFIX)
    nodes = _check_nodes(settings.node_entries(), f"{config.source}: {PREFIX}.nodes")
    reg = settings.register
    gateways = tuple(
        check_url(g, f"{config.source}: {PREFIX}.register.gateways[{i}]") for i, g in enumerate(reg.gateways)
    )
    if reg.grpc:
        check_target(reg.grpc, f"{config.source}: {PREFIX}.register.grpc")
    if reg.url:
        check_url(reg.url, f"{config.source}: {PREFIX}.register.url")
    elif gateways and config.server.host in ("0.0.0.0", "::", ""):
        raise ConfigError(
            f"{config.source}: {PREFIX}.register.url: required when server.host is {config.server.host!r}: "
            "gateways need an address they can reach this node at"
        )
    if gateways and not reg.token:
        raise ConfigError(f"{config.source}: {PREFIX}.register.token: required when register.gateways is set")
    if bool(settings.tls.cert_file) != bool(settings.tls.key_file):
        missing = "key_file" if settings.tls.cert_file else "cert_file"
        raise ConfigError(f"{config.source}: {PREFIX}.tls.{missing}: required with the other (a PEM file path)")
    return attrs.evolve(settings, nodes=tuple(nodes), register=attrs.evolve(reg, gateways=gateways))


def node_file_path(config: NodeConfig, settings: LbSettings) -> Path | None:
    return (Path(config.base_dir) / settings.node_file).resolve() if settings.node_file else None


def read_node_file(path: Path) -> list[NodeEntry]:
    """The ``nodes = [...]`` array of a node file; :class:`ConfigError` naming the file when bad."""
    from dlinfer.api import read_toml

    data: dict[str, Any] = read_toml(path)
    parsed = build(NodeFile, data, path)
    entries = [NodeEntry(n) if isinstance(n, str) else n for n in parsed.nodes]
    return _check_nodes(entries, f"{path}: nodes")


@attrs.frozen
class ClientTls:
    """The gateway's TLS material for its connections to nodes, read and checked once."""

    context: ssl.SSLContext
    ca: bytes | None
    cert: bytes | None
    key: bytes | None


def client_tls(config: NodeConfig, settings: LbSettings) -> ClientTls:
    """The SSL context for https:// nodes and the same files for gRPC; errors name the key."""
    tls = settings.tls

    def read(key: str, name: str) -> tuple[bytes | None, Path | None]:
        return read_config_file(config, f"{PREFIX}.tls.{key}", name) if name else (None, None)

    ca, ca_path = read("ca_file", tls.ca_file)
    cert, cert_path = read("cert_file", tls.cert_file)
    key, key_path = read("key_file", tls.key_file)
    try:
        context = ssl.create_default_context(cafile=str(ca_path) if ca_path else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.source}: {PREFIX}.tls.ca_file: no PEM CA certificate in {ca_path}: {exc}") from None
    if cert_path and key_path:
        try:
            context.load_cert_chain(cert_path, key_path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{config.source}: {PREFIX}.tls.cert_file/key_file: not a PEM certificate and its key: {exc}"
            ) from None
    return ClientTls(context, ca, cert, key)
