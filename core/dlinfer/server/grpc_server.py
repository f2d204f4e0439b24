"""The node's ``grpc.aio`` server, sharing the event loop with aiohttp.

Services are added by plugins through ``dlinfer_grpc_services`` (the V2
GRPCInferenceService, TF-Serving's PredictionService, ...). Without any
service the gRPC port is not opened.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..config import NodeConfig
from ..errors import ConfigError
from ..plugins import Plugins
from ..repository import ModelRepository
from .body_budget import BodyBudget
from .connections import connection_cap
from .tls import TlsFiles, grpc_credentials

if TYPE_CHECKING:
    from ..dataplane import DataPlane

log = logging.getLogger("dlinfer.grpc")


async def start_grpc(
    config: NodeConfig,
    plugins: Plugins,
    repository: ModelRepository,
    tls: TlsFiles | None = None,
    budget: BodyBudget | None = None,
    *,
    state: DataPlane,
) -> Any | None:
    """Build, populate and start the gRPC server (over TLS with ``tls``); None when no plugin adds a service.

    ``budget``: the HTTP port's request body budget, shared so both ports together stay within it.
    ``state``: the node's readiness, which the services' health methods answer from.
    """
    if not plugins.hook.dlinfer_grpc_services.get_hookimpls():
        return None
    import grpc

    from .grpc_budget import GrpcBodyBudget

    limits = config.limits
    cap = connection_cap(limits.max_connections)
    server = grpc.aio.server(
        interceptors=[GrpcBodyBudget(budget)] if budget else None,
        options=[
            ("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_send_message_length", limits.max_body_bytes),
            ("grpc.so_reuseport", 0),
            # The HTTP port's guards, in HTTP/2 terms: a connection must finish its handshake (TLS and
            # the HTTP/2 preface) within the header deadline, and one without calls is closed when idle.
            ("grpc.server_handshake_timeout_ms", round(limits.header_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", round(limits.idle_timeout_s * 1000)),
            ("grpc.max_allowed_incoming_connections", cap),
            # One connection (e.g. a gateway's channel) may carry as many concurrent calls as the
            # HTTP port has connections; by default the number is unbounded.
            ("grpc.max_concurrent_streams", cap),
        ],
    )
    plugins.hook.dlinfer_grpc_services(server=server, repository=repository, state=state)
    address = f"{config.server.host}:{config.server.grpc_port}"
    try:
        port = server.add_secure_port(address, grpc_credentials(tls)) if tls else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"{config.source}: server.grpc_port: cannot listen on {address}: {exc}") from None
    await server.start()
    log.info("dlinfer serving gRPC%s on %s", " over TLS" if tls else "", address if port else "?")
    return server


async def stop_grpc(server: Any | None, grace_s: float) -> None:
    if server is not None:
        await server.stop(grace_s)
