"""One error hierarchy for the whole server.

Every error a client or operator can see is a :class:`DlinferError`. Each class
carries the HTTP status and the gRPC status code name it maps to, so frontends
translate errors in exactly one place and never guess.
"""

from __future__ import annotations


class DlinferError(Exception):
    """Base of every error dlinfer reports on purpose."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(DlinferError):
    """A node or model configuration file is missing, unreadable or invalid."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PluginLoadError(DlinferError):
    """A plugin failed to import, or two plugins claim the same name."""


class ModelNotFound(DlinferError):
    """The model, or the requested version of it, does not exist."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelNotReady(DlinferError):
    """The model exists but is not ready to serve (loading, failed, unloaded)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class ModelLoadError(DlinferError):
    """A model's files could not be loaded by any loader."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class InvalidInput(DlinferError):
    """The request is malformed or does not match the model's inputs."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidInput):
    """The request body exceeds the configured size limit."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Overloaded(DlinferError):
    """The model's queue is full; the client should back off and retry.

    ``retry_after_s``: about when the queue will have room (HTTP ``Retry-After``).
    """

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(DlinferError):
    """The request's deadline passed before it could be answered."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class Unavailable(DlinferError):
    """The server is shutting down or not ready."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class BodyBudgetExhausted(Unavailable):
    """Request bodies in flight already hold ``limits.max_inflight_body_bytes``; retry shortly."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(InvalidInput):
    """The client did not send the whole request in time (a stalled or slow-loris body)."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class Unauthenticated(DlinferError):
    """A protected endpoint was called without valid credentials."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class InferenceError(DlinferError):
    """The framework raised while running a model."""

    http_status = 500
    grpc_code = "INTERNAL"


class Unsupported(InvalidInput):
    """The request asks for a protocol feature this server does not offer or has turned off
    (CUDA shared memory; system shared memory while ``server.shared_memory`` is false)."""

    http_status = 400
    grpc_code = "UNIMPLEMENTED"
