"""Checks every V2 frontend (HTTP and gRPC) applies the same way: request
limits, the per-request ``timeout`` parameter and the control-endpoint token."""

from __future__ import annotations

import hmac

from ..config import NodeConfig
from ..datatypes import element_count
from ..errors import InvalidInput, ModelNotFound, Unauthenticated
from ..inference import InferenceRequest


def check_limits(request: InferenceRequest, config: NodeConfig) -> None:
    """Refuse requests over the node's limits before they are queued."""
    limit = config.limits.max_tensor_elements
    for inp in request.inputs:
        n = element_count(inp.shape)
        if n > limit:
            raise InvalidInput(
                f"input {inp.name!r}: {n} elements is over the limit of {limit} (limits.max_tensor_elements)"
            )


def timeout_s(request: InferenceRequest) -> float | None:
    """The request's ``timeout`` parameter (microseconds, as in Triton) in seconds."""
    timeout = request.parameters.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidInput("parameter 'timeout' must be a positive number of microseconds")
    return timeout / 1e6


def check_control(config: NodeConfig, authorization: str | None) -> None:
    """Model control must be enabled and, when a token is configured, the bearer token must match."""
    if config.repository.control_mode == "none":
        raise InvalidInput("model control is disabled (repository.control_mode = 'none')")
    token = config.repository.control_token
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthenticated("model control needs 'Authorization: Bearer <token>' with the node's control token")


def version_arg(version: str | None) -> str | None:
    """A version path segment or field: empty means latest; otherwise a positive integer."""
    if version in (None, ""):
        return None
    if not version.isascii() or not version.isdigit():
        raise ModelNotFound(f"invalid version {version!r}: expected a positive integer")
    return version
