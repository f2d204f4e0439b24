"""TLS for the node's ports from ``[server.tls]``: one place reads and checks the files."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import attrs

from ..config import NodeConfig
from ..errors import ConfigError


@attrs.frozen
class TlsFiles:
    """The PEM contents of ``[server.tls]``, read and checked once."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    cert_path: Path
    key_path: Path
    client_ca_path: Path | None


def read_config_file(config: NodeConfig, key: str, name: str) -> tuple[bytes, Path]:
    """A file named by setting ``key`` (relative to the config's folder): its bytes and path."""
    path = (Path(config.base_dir) / name).resolve()
    try:
        return path.read_bytes(), path
    except OSError as exc:
        raise ConfigError(f"{config.source}: {key}: cannot read {path}: {exc.strerror}") from None


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
    files = TlsFiles(cert, key, ca, cert_path, key_path, ca_path)
    ssl_context(files, config.source)  # refuse files that do not load now, not at the first handshake
    return files


def ssl_context(files: TlsFiles, source: str = "<config>") -> ssl.SSLContext:
    """The HTTP server's context: TLS 1.2+, client certificates required when a client CA is set."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(files.cert_path, files.key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{source}: server.tls.cert_file/key_file: {files.cert_path.name} and {files.key_path.name} "
            f"are not a PEM certificate and its private key: {exc}"
        ) from None
    if files.client_ca_path is not None:
        try:
            ctx.load_verify_locations(cafile=str(files.client_ca_path))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{source}: server.tls.client_ca_file: {files.client_ca_path.name} holds no PEM CA certificate: {exc}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def grpc_credentials(files: TlsFiles) -> Any:
    """The gRPC server's credentials from the same files."""
    import grpc

    return grpc.ssl_server_credentials(
        [(files.key, files.cert)], root_certificates=files.client_ca, require_client_auth=files.client_ca is not None
    )
