"""The node's ``grpc.aio`` server, sharing the event loop with aiohttp.

Services are added by plugins through ``dlinfer_grpc_services`` (the V2
GRPCInferenceService, TF-Serving's PredictionService, ...). Without any
service the gRPC port is not opened.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import NodeConfig
from ..errors import ConfigError
from ..plugins import Plugins
from ..repository import ModelRepository
from .tls import TlsFiles, grpc_credentials

log = logging.getLogger("dlinfer.grpc")


async def start_grpc(
    config: NodeConfig, plugins: Plugins, repository: ModelRepository, tls: TlsFiles | None = None
) -> Any | None:
    """Build, populate and start the gRPC server (over TLS with ``tls``); None when no plugin adds a service."""
    if not plugins.hook.dlinfer_grpc_services.get_hookimpls():
        return None
    import grpc

    limit = config.limits.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    plugins.hook.dlinfer_grpc_services(server=server, repository=repository)
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
