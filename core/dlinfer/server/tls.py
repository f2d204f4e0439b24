"""TLS for the node's ports from ``[server.tls]``: one place reads and checks the files."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import attrs

from ..config import NodeConfig
from ..errors import ConfigError
from ..settings import read_config_file


@attrs.frozen
class TlsFiles:
    """``[server.tls]`` read and checked once at start: the HTTP server's SSL context and the
    PEM bytes gRPC's credentials take."""

    context: ssl.SSLContext
    cert: bytes
    key: bytes
    client_ca: bytes | None


def tls_files(config: NodeConfig) -> TlsFiles | None:
    """The node's TLS files, or None when TLS is off; :class:`ConfigError` names the key at fault."""
    tls = config.server.tls
    if not tls.cert_file and not tls.key_file:
        if tls.client_ca_file:
            raise ConfigError(f"{config.source}: server.tls.client_ca_file needs cert_file and key_file as well")
        return None
    if not (tls.cert_file and tls.key_file):
        missing = "key_file" if tls.cert_file else "cert_file"
        raise ConfigError(f"{config.source}: server.tls.{missing}: expected a PEM file path, got nothing")

    cert, cert_path = read_config_file(config, "server.tls.cert_file", tls.cert_file)
    key, key_path = read_config_file(config, "server.tls.key_file", tls.key_file)
    ca: bytes | None = None
    ca_path: Path | None = None
    if tls.client_ca_file:
        ca, ca_path = read_config_file(config, "server.tls.client_ca_file", tls.client_ca_file)
    # Built now, so files that do not load stop the node at start, not at the first handshake.
    context = _server_context(config.source, cert_path, key_path, ca_path)
    return TlsFiles(context, cert, key, ca)


def _server_context(source: str, cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The HTTP server's context: TLS 1.2+, client certificates required when a client CA is set."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{source}: server.tls.cert_file/key_file: {cert.name} and {key.name} "
            f"are not a PEM certificate and its private key: {exc}"
        ) from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{source}: server.tls.client_ca_file: {client_ca.name} holds no PEM CA certificate: {exc}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def grpc_credentials(files: TlsFiles) -> Any:
    """The gRPC server's credentials from the same files."""
    import grpc

    return grpc.ssl_server_credentials(
        [(files.key, files.cert)], root_certificates=files.client_ca, require_client_auth=files.client_ca is not None
    )
