"""The public API for protocol frontends: plugins that answer requests in a protocol of their own
(TF-Serving's REST and gRPC APIs in dlinfer-tf) or forward them (the dlinfer-lb gateway).

A frontend is a thin adapter over the node's :class:`DataPlane` (``app[STATE]`` in
``dlinfer_routes``; the ``state`` argument of ``dlinfer_grpc_services``): it parses its wire
format, asks the data plane, and maps answers and :class:`~dlinfer.api.DlinferError` subclasses
(``http_status``, ``grpc_code``) to its protocol. The names here are stable like
:mod:`dlinfer.api`'s.

Data plane
    - ``DataPlane`` — readiness (``ready``, ``ready_model``), lookup (``model``), admission
      (``admit`` → :class:`Lease`), ``statistics``, ``index``, ``load``/``unload``; ``forwarding``
      is true on a gateway, where local frontends add no routes or services.
    - ``Lease`` — one admitted request: ``with plane.admit(name, version) as lease: ...
      await lease.infer(request, deadline_s)``; counted in flight from admission to response.
    - ``ServedModel`` — one loaded model version: ``name``, ``version``, ``inputs``, ``outputs``,
      ``metadata()``, ``runner``, ``config``.
    - ``ModelRepository`` — the node's models (``DataPlane.repository``), for frontends that
      report per-version state.
    - ``check_name`` / ``version_arg`` — validate a model name / version as every frontend does.

aiohttp application keys and helpers
    - ``CONFIG``, ``PLUGINS``, ``STATE`` — the node's :class:`~dlinfer.api.NodeConfig`,
      :class:`~dlinfer.api.Plugins` and :class:`DataPlane` on the application.
    - ``read_body`` — a request body within ``limits.max_body_bytes`` and ``limits.body_timeout_s``,
      decompressed when the client compressed it.
    - ``json_response`` — an aiohttp JSON response.
    - ``index_ready_only`` — the ``ready`` flag of a V2 repository-index request body.
    - ``v2_server_routes`` — the V2 server-level routes (metadata, health, plugins), for a
      frontend that replaces the model routes.

JSON tensors
    - ``json_floats`` — an array as JSON-ready values, NaN and infinities as tokens.
    - ``load_object`` / ``tensor_from_json`` — parse a JSON body / one tensor's nested lists.

V2 gRPC
    - ``answer_stream`` — serve a request stream (``ModelStreamInfer``): each request starts as it
      arrives and is answered as it finishes.
    - ``v2_pb`` — the ``inference`` protobuf messages; ``V2_GRPC_SERVICE``,
      ``V2_GRPC_EXTENSIONS`` — the service name and the extensions a node announces.
    - ``SERVER_VERSION`` — dlinfer's version, as servers report it.
"""

from __future__ import annotations

from .. import __version__ as SERVER_VERSION
from ..builtin.json_codec import json_floats, load_object, tensor_from_json
from ..dataplane import EXTENSIONS as V2_GRPC_EXTENSIONS
from ..dataplane import DataPlane, Lease, version_arg
from ..repository import ModelRepository, ServedModel, check_name
from ..server.app import CONFIG, PLUGINS, STATE
from ..server.proto import inference_pb2 as v2_pb
from ..server.streams import answer_stream
from ..server.v2_grpc import SERVICE as V2_GRPC_SERVICE
from ..server.v2_http import index_ready_only, json_response, read_body
from ..server.v2_http import server_routes as v2_server_routes

__all__ = [
    "CONFIG",
    "PLUGINS",
    "SERVER_VERSION",
    "STATE",
    "V2_GRPC_EXTENSIONS",
    "V2_GRPC_SERVICE",
    "DataPlane",
    "Lease",
    "ModelRepository",
    "ServedModel",
    "answer_stream",
    "check_name",
    "index_ready_only",
    "json_floats",
    "json_response",
    "load_object",
    "read_body",
    "tensor_from_json",
    "v2_pb",
    "v2_server_routes",
    "version_arg",
]
