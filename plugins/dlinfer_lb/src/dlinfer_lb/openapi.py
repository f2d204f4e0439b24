"""OpenAPI description of the gateway's routes (:mod:`.gateway`).

The gateway answers the same V2 endpoints as a node, so their description is
the core's, plus the answers only a gateway gives (502 when a node fails,
503 when no node serves the model) and its own ``/v2/-/nodes``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dlinfer.api.openapi import describe_v2, error_response, json_content, json_response, ref, registered_routes

#: Forwarded operations: what a node would answer, or the gateway's own failure.
FORWARDED_ERRORS = {
    "502": error_response("the node chosen for the request failed or did not answer"),
    "503": error_response("no healthy node serves the model, or the gateway is draining"),
    "504": error_response("the request's deadline passed"),
}

SCHEMAS: dict[str, Any] = {
    "GatewayNode": {
        "type": "object",
        "required": ["url", "healthy"],
        "properties": {
            "url": {"type": "string"},
            "grpc": {"type": "string", "description": "host:port of the node's gRPC service; empty: HTTP only"},
            "weight": {"type": "integer"},
            "sources": {"type": "array", "items": {"type": "string"}, "description": "node file, registration, ..."},
            "healthy": {"type": "boolean"},
            "ejected": {"type": "boolean", "description": "ejected by outlier detection"},
            "ejected_for_s": {"type": "number"},
            "ejections": {"type": "integer"},
            "admitted": {"type": "boolean"},
            "models": {
                "type": "object",
                "description": "ready models and their versions",
                "additionalProperties": {"type": "array", "items": {"type": ["string", "integer"]}},
            },
            "outstanding": {"type": "integer", "description": "requests in flight to the node"},
            "requests": {"type": "integer"},
            "failures": {"type": "integer"},
            "last_error": {"type": ["string", "null"]},
        },
    },
    "GatewayNodes": {
        "type": "object",
        "required": ["nodes"],
        "properties": {
            "nodes": {"type": "array", "items": ref("GatewayNode")},
            "node_file": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "error": {"type": ["string", "null"]}},
            },
        },
    },
    "GatewayModelStatistics": {
        "description": "The statistics extension summed over the admitted nodes that have the model",
        "allOf": [
            ref("ModelStatisticsList"),
            {
                "type": "object",
                "properties": {
                    "nodes": {"type": "array", "items": {"type": "string"}, "description": "nodes summed"},
                    "nodes_failed": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "nodes left out, with the reason",
                    },
                },
            },
        ],
    },
    "NodeRegistration": {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string", "description": "the node's HTTP base address"},
            "grpc": {"type": "string", "description": "host:port of the node's gRPC service (optional)"},
            "weight": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1},
            "ttl_s": {"type": "number", "minimum": 0, "maximum": 3600, "default": 15, "description": "0 deregisters"},
        },
    },
}


def _words(path: str) -> list[str]:
    """``/v1/models/{model}/versions/{version}:{verb}`` -> ``["Model", "Versions", "Version", "Verb"]``."""
    return [w.strip("{}").title() for w in path.replace(":", "/").split("/")[3:] if w]


def describe(spec: dict[str, Any], app: web.Application) -> None:
    """Add the gateway's V2 endpoints, ``/v2/-/nodes`` and (when the gateway serves its own) ``/metrics``."""
    describe_v2(spec, app)
    stats = json_response("statistics summed over the nodes", ref("GatewayModelStatistics"))
    for path, item in spec["paths"].items():
        if path.startswith("/v2/models/") or path.startswith("/v2/repository/models/"):
            for op in item.values():
                for status, response in FORWARDED_ERRORS.items():
                    op["responses"].setdefault(status, response)
                if path.endswith("/stats"):
                    op["responses"]["200"] = stats
    spec["components"]["schemas"].update(SCHEMAS)
    # TF-Serving's REST API, forwarded; dlinfer-tf describes it in full where it is installed.
    for method, path in registered_routes(app):
        if path.startswith("/v1/models/"):
            spec["paths"].setdefault(path, {}).setdefault(
                method,
                {
                    "operationId": "tfServing" + method.title() + "".join(_words(path)),
                    "summary": "TF-Serving REST API, forwarded to a node that serves the model",
                    "tags": ["tf-serving"],
                    "responses": {"200": json_response("the node's answer", {"type": "object"}), **FORWARDED_ERRORS},
                },
            )
    spec["paths"]["/v2/-/nodes"] = {
        "get": {
            "operationId": "gatewayNodes",
            "summary": "The gateway's nodes with health, ejections, ready models and traffic",
            "tags": ["gateway"],
            "responses": {"200": json_response("the nodes", ref("GatewayNodes"))},
        },
        "post": {
            "operationId": "gatewayRegisterNode",
            "summary": "A node's registration heartbeat",
            "tags": ["gateway"],
            "security": [{"registrationToken": []}],
            "requestBody": {"required": True, "content": json_content(ref("NodeRegistration"))},
            "responses": {
                "200": json_response("registered (or refused by the gateway's policy)", {"type": "object"}),
                "400": error_response("malformed registration"),
                "401": error_response("registration is off, or the token is wrong"),
            },
        },
    }
    spec["components"]["securitySchemes"]["registrationToken"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The gateway's `plugins.lb.registration_token`.",
    }
    if any(r.canonical == "/metrics" for r in app.router.resources()):
        spec["paths"].setdefault(
            "/metrics",
            {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of the gateway",
                    "tags": ["meta"],
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        )
