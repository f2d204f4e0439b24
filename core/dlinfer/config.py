"""``node.toml``: the node's configuration, as frozen attrs classes.

Every table and key is documented in ``docs/configuration.md``. Paths in the
file are relative to the file's own folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import attrs

from .settings import build, in_range, one_of, read_toml, setting

MiB = 1024 * 1024


@attrs.frozen
class TlsConfig:
    """TLS on the node's HTTP and gRPC ports."""

    cert_file: str = setting(
        "", "PEM certificate (chain) of the node; with `key_file` set, HTTP and gRPC are served over TLS only."
    )
    key_file: str = setting("", "PEM private key of `cert_file`.")
    client_ca_file: str = setting(
        "",
        "PEM CA certificates; when set, clients must present a certificate one of them signed (mutual TLS, "
        "e.g. only the gateway may call the nodes).",
    )


@attrs.frozen
class ServerConfig:
    """Where and how the node listens."""

    host: str = setting("127.0.0.1", "Address to listen on (`0.0.0.0` for all interfaces).")
    http_port: int = setting(8000, "V2 REST port.", validator=in_range(0, 65535))
    grpc_port: int = setting(
        8001, "gRPC port (opened when a plugin adds a gRPC service).", validator=in_range(0, 65535)
    )
    name: str = setting("dlinfer", "Server name reported by `GET /v2`.")
    drain_timeout_s: float = setting(
        30.0,
        "On SIGTERM/SIGINT, how long in-flight requests may take to finish.",
        validator=in_range(0, kind="a number"),
    )
    event_loop: str = setting(
        "auto",
        "`auto`: uvloop where it is installed (it is a dependency on Linux and macOS), else asyncio's own "
        "loop; `uvloop` or `asyncio` to choose. uvloop cuts the server's CPU per request.",
        validator=one_of("auto", "uvloop", "asyncio"),
    )
    tls: TlsConfig = setting(TlsConfig(), "TLS for the HTTP and gRPC ports (off unless `cert_file` is set).")
    trace_file: str = setting(
        "",
        "File the trace extension appends traced requests to (one JSON object per line); tracing is turned "
        "on at run time (`/v2/trace/setting`), never pointed elsewhere by a request. Empty: no tracing.",
    )
    compress_responses: bool = setting(
        True,
        "Compress inference responses of 1 KiB or more with gzip or deflate (level 1) when the request's "
        "`Accept-Encoding` asks, as Triton does; `false`: always send them as they are.",
    )
    access_log: bool = setting(
        False,
        "One log record per HTTP request on the `dlinfer.access` logger: client, method, path, status, bytes sent, "
        'milliseconds (fields under `http` with `logging.format = "json"`).',
    )
    keep_freed_memory: bool = setting(
        True,
        "On glibc, keep freed request buffers for reuse (mmap threshold 64 MiB, trim threshold 256 MiB) "
        "instead of returning them to the OS: large tensors otherwise page-fault fresh memory on every request.",
    )
    shared_memory: bool = setting(
        False,
        "Offer the system shared memory extension (`/v2/systemsharedmemory`, gRPC `SystemSharedMemory*`): "
        "clients pass tensors through POSIX shared memory objects in `/dev/shm`. Off by default: a client "
        "that reaches the ports could make the server read and overwrite any shared memory object the "
        "server's user can open; turn it on only where every client is trusted and local.",
    )


@attrs.frozen
class RepositoryConfig:
    """The model repository and how models in it are loaded."""

    path: str = setting("models", "The model repository folder.")
    control_mode: str = setting(
        "explicit",
        "`none`: load everything at start, no load/unload API; `explicit`: load `startup_models` at start, "
        "then through the API; `poll`: like `explicit`, and rescan every `poll_interval_s`.",
        validator=one_of("none", "explicit", "poll"),
    )
    startup_models: tuple[str, ...] = setting(("*",), "Glob patterns of the models to load at start.")
    poll_interval_s: float = setting(5.0, "Rescan interval in poll mode.", validator=in_range(0.1, kind="a number"))
    allow_pickle: bool = setting(
        False,
        "Let loaders unpickle files (e.g. whole pickled torch modules); a model's config.toml must opt in "
        "too. Only for repositories you trust: unpickling runs arbitrary code.",
    )
    control_token: str = setting(
        "",
        "When set, the model control endpoints (load/unload over HTTP and gRPC) need "
        "`Authorization: Bearer <token>`; empty: no token needed.",
        repr=False,
    )


@attrs.frozen
class PluginsConfig:
    """Which plugins load. Sub-tables ``[plugins.<name>]`` hold a plugin's own settings."""

    disable: tuple[str, ...] = setting((), "Plugin names not to load (entry-point or built-in module names).")
    enable: tuple[str, ...] = setting(
        (), "With `DLINFER_DISABLE_PLUGIN_AUTOLOAD=1`, the only entry-point plugins to load."
    )
    optional: tuple[str, ...] = setting((), "Plugins whose import failure is logged instead of stopping the node.")
    plugins_dir: str = setting("", "A folder of single-file plugins (`*.py`) loaded without packaging.")
    settings: dict[str, dict[str, Any]] = setting(
        attrs.Factory(dict), "Sub-tables `[plugins.<name>]`: each plugin's own settings.", metadata={"reference": False}
    )


@attrs.frozen
class LimitsConfig:
    """Bounds that keep one client from hurting the others."""

    max_body_bytes: int = setting(64 * MiB, "Larger request bodies get HTTP 413.", validator=in_range(1024))
    max_batch_size: int = setting(
        64, "Batch limit for models whose config does not set `max_batch_size`.", validator=in_range(1)
    )
    max_queue_size: int = setting(256, "Requests waiting per model before HTTP 429.", validator=in_range(1))
    max_queue_wait_ms: float = setting(
        1000.0,
        "Refuse (HTTP 429) a request whose expected wait in its model's queue, estimated from recent service "
        "times, is over this; `0`: the count limit only. Keeps admitted latency bounded under overload.",
        validator=in_range(0, kind="a number"),
    )
    max_tensor_elements: int = setting(
        64 * MiB,
        "Elements of one request tensor, checked from its shape before the request is queued.",
        validator=in_range(1),
    )
    body_timeout_s: float = setting(
        30.0,
        "Seconds a client may take to send a request body (a stalled body gets 408).",
        validator=in_range(0.01, kind="a number"),
    )
    max_header_bytes: int = setting(
        8190,
        "Longest HTTP request line and longest header field; longer ones get HTTP 400.",
        validator=in_range(1024, 1 << 20),
    )
    max_inflight_body_bytes: int = setting(
        1024 * MiB,
        "Request bodies the node holds at once, all requests together (HTTP bodies reserved from "
        "Content-Length before they are read, gRPC messages while processed); over it a request gets "
        "HTTP 503 with Retry-After (gRPC UNAVAILABLE), its body unread. The default fits 16 bodies of "
        "the default `max_body_bytes`.",
        validator=in_range(1024),
    )
    header_timeout_s: float = setting(
        10.0,
        "Seconds a client may take to send a request line and headers, from when its connection opens or its "
        "next request's first byte arrives; a slower one gets 408 and is disconnected (one that sent nothing is "
        "just disconnected). Also bounds TLS handshakes and the gRPC connection handshake.",
        validator=in_range(0.01, kind="a number"),
    )
    idle_timeout_s: float = setting(
        75.0,
        "Seconds a keep-alive connection may sit idle between requests before it is closed (HTTP), or "
        "without any call (gRPC).",
        validator=in_range(0.01, kind="a number"),
    )
    max_connections: int = setting(
        1000,
        "Open connections per port (HTTP and gRPC each). At the limit a new HTTP connection displaces the "
        "oldest one without a request in progress (idle, or still sending headers), or gets 503 if every "
        "connection has one. Lowered at start to what the open-file limit allows.",
        validator=in_range(1, 1 << 20),
    )
    max_shared_memory_regions: int = setting(
        64,
        "System shared memory regions registered at once (each holds a mapping); one more is refused.",
        validator=in_range(1, 1 << 16),
    )


@attrs.frozen
class ThreadsConfig:
    """Framework thread pools."""

    intra_op: int = setting(
        0,
        "Framework intra-op threads per model instance; `0`: the CPUs this process may use, shared among "
        "a model's instances.",
        validator=in_range(0, 1024),
    )
    inter_op: int = setting(1, "Framework inter-op threads.", validator=in_range(0, 1024))


@attrs.frozen
class LoggingConfig:
    """Log output."""

    level: Literal["debug", "info", "warning", "error"] = setting("info", "Log level.")
    format: Literal["text", "json"] = setting("text", "`text`, or `json`: one JSON object per line.")


@attrs.frozen
class MetricsConfig:
    """The Prometheus metrics at ``/metrics``."""

    triton_names: bool = setting(
        False,
        "Also expose the per-model series under Triton's `nv_inference_*` names (success, failure by "
        "reason, count, exec count, request/queue/compute microseconds, pending), for dashboards built "
        "for Triton.",
    )


@attrs.frozen
class NodeConfig:
    """The whole ``node.toml``."""

    server: ServerConfig = setting(ServerConfig(), "Where and how the node listens.")
    repository: RepositoryConfig = setting(RepositoryConfig(), "The model repository.")
    plugins: PluginsConfig = setting(PluginsConfig(), "Which plugins load.")
    limits: LimitsConfig = setting(LimitsConfig(), "Request limits.")
    threads: ThreadsConfig = setting(ThreadsConfig(), "Framework thread pools.")
    logging: LoggingConfig = setting(LoggingConfig(), "Log output.")
    metrics: MetricsConfig = setting(MetricsConfig(), "Prometheus metrics.")
    base_dir: str = setting(".", "Folder relative paths are resolved against.", metadata={"toml": False})
    source: str = setting("<defaults>", "Where the configuration came from.", metadata={"toml": False})

    @property
    def repository_path(self) -> Path:
        return (Path(self.base_dir) / self.repository.path).resolve()

    @property
    def plugins_dir(self) -> Path | None:
        d = self.plugins.plugins_dir
        return (Path(self.base_dir) / d).resolve() if d else None

    @property
    def intra_op_threads(self) -> int:
        return self.threads.intra_op or usable_cpus()

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The ``[plugins.<name>]`` table, for a plugin to validate itself."""
        return self.plugins.settings.get(name, {})


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, a container's cpuset) where the
    system has one, else every CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
