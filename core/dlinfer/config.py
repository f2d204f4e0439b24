"""``node.toml``: the node's configuration, as frozen attrs classes.

Every table and key is documented in ``docs/configuration.md``. Paths in the
file are relative to the file's own folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import attrs

from .settings import build, in_range, one_of, read_toml

MiB = 1024 * 1024


@attrs.frozen
class ServerConfig:
    """Where and how the node listens."""

    host: str = "127.0.0.1"
    http_port: int = attrs.field(default=8000, validator=in_range(0, 65535))
    grpc_port: int = attrs.field(default=8001, validator=in_range(0, 65535))
    name: str = "dlinfer"
    drain_timeout_s: float = attrs.field(default=30.0, validator=in_range(0, kind="a number"))


@attrs.frozen
class RepositoryConfig:
    """The model repository and how models in it are loaded."""

    path: str = "models"
    #: "none": load everything at start, no control API; "explicit": load
    #: ``startup_models`` at start, then only through the control API;
    #: "poll": like "explicit" and also rescan every ``poll_interval_s``.
    control_mode: str = attrs.field(default="explicit", validator=one_of("none", "explicit", "poll"))
    startup_models: tuple[str, ...] = ("*",)
    poll_interval_s: float = attrs.field(default=5.0, validator=in_range(0.1, kind="a number"))
    #: Allow loaders to unpickle files (e.g. whole pickled torch modules). Unsafe
    #: for untrusted repositories; a model config must opt in too.
    allow_pickle: bool = False
    #: When set, the model control endpoints (load/unload over HTTP and gRPC)
    #: need ``Authorization: Bearer <token>``; empty: no token needed.
    control_token: str = attrs.field(default="", repr=False)


@attrs.frozen
class PluginsConfig:
    """Which plugins load. Sub-tables ``[plugins.<name>]`` hold a plugin's own settings."""

    disable: tuple[str, ...] = ()
    #: With DLINFER_DISABLE_PLUGIN_AUTOLOAD=1, only these entry points load.
    enable: tuple[str, ...] = ()
    #: Plugins whose import failure is logged instead of stopping the node.
    optional: tuple[str, ...] = ()
    #: A folder of single-file plugins (``*.py``) loaded without packaging.
    plugins_dir: str = ""
    settings: dict[str, dict[str, Any]] = attrs.field(factory=dict)


@attrs.frozen
class LimitsConfig:
    """Bounds that keep one client from hurting the others."""

    max_body_bytes: int = attrs.field(default=64 * MiB, validator=in_range(1024))
    max_batch_size: int = attrs.field(default=64, validator=in_range(1))
    max_queue_size: int = attrs.field(default=256, validator=in_range(1))
    #: Elements of one request tensor, checked from its shape before any data is read.
    max_tensor_elements: int = attrs.field(default=64 * MiB, validator=in_range(1))
    #: Seconds a client may take to send a request body (a stalled body gets 408).
    body_timeout_s: float = attrs.field(default=30.0, validator=in_range(0.01, kind="a number"))


@attrs.frozen
class ThreadsConfig:
    """Framework thread pools. 0 means: use the number of cores."""

    intra_op: int = attrs.field(default=0, validator=in_range(0, 1024))
    inter_op: int = attrs.field(default=1, validator=in_range(0, 1024))


@attrs.frozen
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@attrs.frozen
class NodeConfig:
    """The whole ``node.toml``."""

    server: ServerConfig = ServerConfig()
    repository: RepositoryConfig = RepositoryConfig()
    plugins: PluginsConfig = PluginsConfig()
    limits: LimitsConfig = LimitsConfig()
    threads: ThreadsConfig = ThreadsConfig()
    logging: LoggingConfig = LoggingConfig()
    #: Folder the relative paths in the file are resolved against (not a TOML key).
    base_dir: str = attrs.field(default=".", metadata={"toml": False})
    #: Where the configuration came from, for messages (not a TOML key).
    source: str = attrs.field(default="<defaults>", metadata={"toml": False})

    @property
    def repository_path(self) -> Path:
        return (Path(self.base_dir) / self.repository.path).resolve()

    @property
    def plugins_dir(self) -> Path | None:
        d = self.plugins.plugins_dir
        return (Path(self.base_dir) / d).resolve() if d else None

    @property
    def intra_op_threads(self) -> int:
        return self.threads.intra_op or os.cpu_count() or 1

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The ``[plugins.<name>]`` table, for a plugin to validate itself."""
        return self.plugins.settings.get(name, {})


_PLUGIN_KEYS = {f.name for f in attrs.fields(PluginsConfig)} - {"settings"}


def node_config_from_dict(data: dict[str, Any], source: str = "<dict>", base_dir: str = ".") -> NodeConfig:
    """Validate a parsed ``node.toml`` table into :class:`NodeConfig`."""
    data = dict(data)
    plugins = data.get("plugins")
    if isinstance(plugins, dict):
        # Tables under [plugins] that are not known keys are plugin settings.
        settings = {k: v for k, v in plugins.items() if k not in _PLUGIN_KEYS and isinstance(v, dict)}
        rest = {k: v for k, v in plugins.items() if k not in settings}
        data["plugins"] = {**rest, "settings": settings} if settings else rest
    cfg = build(NodeConfig, data, source)
    return attrs.evolve(cfg, base_dir=base_dir, source=source)


def load_node_config(path: str | Path | None, **overrides: Any) -> NodeConfig:
    """Read ``node.toml`` (or use defaults when ``path`` is None) and apply CLI overrides.

    ``overrides`` are dotted keys such as ``{"server.http_port": 9000}``; None values are ignored.
    """
    if path is None:
        data: dict[str, Any] = {}
        source, base = "<defaults>", os.getcwd()
    else:
        p = Path(path)
        data = read_toml(p)
        source, base = str(p), str(p.resolve().parent)
    for dotted, value in overrides.items():
        if value is None:
            continue
        table, key = dotted.split(".", 1)
        section = data.setdefault(table, {})
        if isinstance(section, dict):
            section[key] = value
    return node_config_from_dict(data, source=source, base_dir=base)
