"""The data plane: what every frontend does with a request, whatever its protocol.

V2 HTTP and gRPC, TF-Serving REST and gRPC, and any plugin frontend are thin
adapters over one :class:`DataPlane`: they parse their wire format, call it, and
map its answers and :class:`~dlinfer.errors.DlinferError` subclasses to their
own status codes. Readiness, name and version checks, admission, request limits,
deadlines, inference, metadata and model control live here once, so the
frontends cannot drift apart (one readiness while draining, one refusal when a
queue is full, one in-flight count that drain and reload wait for).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Any

import attrs

from .config import NodeConfig
from .datatypes import element_count
from .errors import InvalidInput, ModelNotFound, ModelNotReady, Unauthenticated
from .inference import InferenceRequest, InferenceResponse
from .load_override import LoadOverride, parse_load_parameters
from .repository import ModelRepository, ServedModel, check_name
from .shared_memory import SharedMemoryRegions
from .tracing import Trace, Tracer, trace_file

#: The V2 protocol extensions every frontend (HTTP and gRPC) offers; :meth:`DataPlane.extensions`
#: adds those that depend on the node's settings.
EXTENSIONS = (
    "logging",
    "trace",
    "model_repository",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "classification",
    "sequence",
    "parameters",
)


def version_arg(version: str | int | None) -> str | None:
    """A version path segment or field: empty means latest; otherwise a positive integer."""
    if version in (None, ""):
        return None
    text = str(version)
    if not text.isascii() or not text.isdigit():
        raise ModelNotFound(f"invalid version {text!r}: expected a positive integer")
    return text


def timeout_s(request: InferenceRequest) -> float | None:
    """The request's ``timeout`` parameter (microseconds, as in Triton) in seconds."""
    timeout = request.parameters.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidInput("parameter 'timeout' must be a positive number of microseconds")
    return timeout / 1e6


def check_limits(request: InferenceRequest, config: NodeConfig) -> None:
    """Refuse requests over the node's limits before they are queued."""
    limit = config.limits.max_tensor_elements
    for inp in request.inputs:
        n = element_count(inp.shape)
        if n > limit:
            raise InvalidInput(
                f"input {inp.name!r}: {n} elements is over the limit of {limit} (limits.max_tensor_elements)"
            )


def check_control(config: NodeConfig, authorization: str | None) -> None:
    """Model control must be enabled and, when a token is configured, the bearer token must match."""
    if config.repository.control_mode == "none":
        raise InvalidInput("model control is disabled (repository.control_mode = 'none')")
    check_token(config, authorization, "model control")


def check_token(config: NodeConfig, authorization: str | None, what: str) -> None:
    """When the node has a control token, ``authorization`` must carry it (``Bearer <token>``)."""
    token = config.repository.control_token
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthenticated(f"{what} needs 'Authorization: Bearer <token>' with the node's control token")


def _discard_written(parsing: asyncio.Future[LoadOverride | None]) -> None:
    if not parsing.cancelled() and parsing.exception() is None and (override := parsing.result()) is not None:
        override.discard()


class Lease:
    """One admitted inference request, from admission to its response.

    Taken before the request body is read or decoded. While held, the model
    version counts the request in flight (drain and unload wait for it, so the
    version cannot be closed under a request still being read), and until
    :meth:`infer` submits it, it counts as queued for the next admissions (a
    burst of large bodies cannot all pass while the queue still looks short).
    """

    def __init__(self, plane: DataPlane, model: ServedModel) -> None:
        self.plane = plane
        self.model = model
        self._pending = False
        self.trace: Trace | None = None

    def __enter__(self) -> Lease:
        self.model.hold()
        self.model.scheduler.pending += 1
        self._pending = True
        if self.plane.tracer.active:
            self.trace = self.plane.tracer.start(self.model.name, self.model.version)
        return self

    def __exit__(self, *exc: object) -> None:
        self._submitted()
        self.model.release()
        if self.trace is not None:
            self.plane.tracer.finish(self.trace)

    def _submitted(self) -> None:
        if self._pending:
            self._pending = False
            self.model.scheduler.pending -= 1

    async def infer(
        self, request: InferenceRequest, deadline_s: float | None = None, model: ServedModel | None = None
    ) -> InferenceResponse:
        """Check the node's limits, then run ``request`` on the leased model (or on ``model``,
        another view of the same runner such as a TF signature) within the earlier of the
        request's ``timeout`` parameter and the transport's ``deadline_s``. Inputs and outputs
        in system shared memory are read from and written to their regions here."""
        check_limits(request, self.plane.config)
        limit = timeout_s(request)
        if deadline_s is not None:
            limit = deadline_s if limit is None else min(limit, deadline_s)
        regions = self.plane.shared_memory.resolve(request) if request.shared_memory else None
        if self.trace is not None:
            self.trace.request_id = request.id or ""
            self.trace.mark("QUEUE_START")
        self._submitted()
        target = model if model is not None else self.model
        response = await target.infer(request, timeout_s=limit, held=target is self.model)
        if regions:
            self.plane.shared_memory.write(response, regions)
        return response


@attrs.define
class DataPlane:
    """The node's requests, protocol-neutral: readiness, lookup, admission, inference,
    metadata and control over one :class:`ModelRepository`.

    ``draining`` lives on the repository, so every path refuses new requests alike.
    """

    repository: ModelRepository
    started: bool = False
    #: Inference is answered by forwarding to other nodes (a gateway), not from the local repository:
    #: set by the plugin that forwards, before the other frontends add their routes and services,
    #: which then stay off (the forwarder answers their protocols).
    forwarding: bool = False
    #: Extra readiness conditions added by plugins (e.g. a gateway: some node is healthy).
    checks: list[Callable[[], bool]] = attrs.field(factory=list)
    #: Registered system shared memory regions (``server.shared_memory``).
    shared_memory: SharedMemoryRegions = attrs.field(
        default=attrs.Factory(
            lambda self: SharedMemoryRegions(
                self.config.server.shared_memory, self.config.limits.max_shared_memory_regions
            ),
            takes_self=True,
        )
    )

    #: Per-request timestamps (the trace extension), written to ``server.trace_file``.
    tracer: Tracer = attrs.field(default=attrs.Factory(lambda self: Tracer(trace_file(self.config)), takes_self=True))

    @property
    def config(self) -> NodeConfig:
        return self.repository.config

    # ------------------------------------------------------------- readiness

    @property
    def draining(self) -> bool:
        return self.repository.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.repository.draining = value

    @property
    def not_ready_reason(self) -> str:
        """Why the node is not ready; empty when it is."""
        if self.draining:
            return "server is shutting down"
        if not self.started:
            return "server is starting"
        if not all(check() for check in self.checks):
            return "server is not ready"
        return ""

    @property
    def ready(self) -> bool:
        return not self.not_ready_reason

    def extensions(self) -> list[str]:
        """The V2 extensions this node offers, as server metadata announces them."""
        return [*EXTENSIONS, "system_shared_memory"] if self.shared_memory.enabled else list(EXTENSIONS)

    def ready_model(self, name: str, version: str | int | None = None) -> ServedModel:
        """The model version a model-ready check reports on: unknown ones raise :class:`ModelNotFound`,
        and every one is :class:`ModelNotReady` while the node is not ready."""
        model = self.model(name, version)
        if reason := self.not_ready_reason:
            raise ModelNotReady(reason)
        return model

    # ---------------------------------------------------------- lookup, admission

    def model(self, name: str, version: str | int | None = None) -> ServedModel:
        """The served model version (latest when ``version`` is empty), name and version checked."""
        return self.repository.get(check_name(name), version_arg(version))

    def admit(self, name: str, version: str | int | None = None) -> Lease:
        """A :class:`Lease` for a new inference request, refused early and cheaply (before its body
        is read): 503 while the node drains, 404 for an unknown model, 429 when its queue is full
        or the expected wait is over the bound. Use it as a context manager around reading,
        decoding and :meth:`Lease.infer`."""
        return Lease(self, self.repository.admit(check_name(name), version_arg(version)))

    def refuse_early(self, name: str, version: str | int | None = None) -> None:
        """Raise what :meth:`admit` would, without taking a lease (``Expect: 100-continue``)."""
        self.repository.admit(check_name(name), version_arg(version))

    # ------------------------------------------------------ metadata, control

    def statistics(self, name: str = "", version: str | int | None = None) -> list[dict[str, Any]]:
        return self.repository.statistics(check_name(name) if name else "", version_arg(version))

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        return self.repository.index(ready_only)

    async def load(
        self, name: str, authorization: str | None, parameters: dict[str, Any] | None = None, base64_files: bool = True
    ) -> None:
        """Load (or reload) a model; ``parameters`` may send its ``config`` and ``file:<path>`` contents
        (:mod:`dlinfer.load_override`), which replace the repository's until the next plain load."""
        check_control(self.config, authorization)
        check_name(name)
        parsing = asyncio.ensure_future(asyncio.to_thread(parse_load_parameters, name, parameters or {}, base64_files))
        try:
            override = await asyncio.shield(parsing)
        except asyncio.CancelledError:  # the files may still be written: remove them once they are
            parsing.add_done_callback(_discard_written)
            raise
        if override is None or override.folder is None:
            self.repository.model_dir(name)
        await self.repository.load_with(name, override)

    async def unload(self, name: str, authorization: str | None) -> None:
        check_control(self.config, authorization)
        await self.repository.unload(check_name(name))
