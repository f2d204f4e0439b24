"""Built-in plugin: the node's OpenAPI 3.1 document.

The document is assembled from the loaded plugins: each one that adds routes
in ``dlinfer_routes`` describes them in ``dlinfer_openapi``. It is built once
per application, on first request, and served at ``GET /v2/-/openapi.json``;
``dlinfer-core openapi`` prints it. :func:`undescribed_routes` lists routes
that no plugin described (the test suite requires it to be empty). The helpers
below build the pieces describers need most.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from aiohttp import web

from .. import __version__
from ..plugins import hookimpl
from .app import PLUGINS

OPENAPI_VERSION = "3.1.0"
SPEC_PATH = "/v2/-/openapi.json"

#: Holds the built document; a dict because the application is frozen once it runs.
_CACHE = web.AppKey("openapi_cache", dict)

# ----------------------------------------------------------------- helpers for describers


def ref(name: str) -> dict[str, str]:
    """A reference to a schema in ``components.schemas``."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A response object whose body is JSON of ``schema``."""
    return {"description": description, "content": json_content(schema)}


def error_response(description: str) -> dict[str, Any]:
    """A response object with the ``{"error": message}`` body every dlinfer error has."""
    return json_response(description, ref("Error"))


def not_found(what: str = "the endpoint or the resource") -> dict[str, Any]:
    return error_response(f"unknown {what}")


#: The schemas every describer may reference.
COMMON_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error dlinfer reports: one message, with the HTTP status saying its class.",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "controlToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The node's `repository.control_token`, required by model control when configured.",
    },
}


def base_document() -> dict[str, Any]:
    """The document before any plugin described its routes."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "dlinfer",
            "version": __version__,
            "summary": "Deep-learning inference server speaking the KServe V2 (Open Inference) protocol.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": {},
        "components": {"schemas": copy.deepcopy(COMMON_SCHEMAS), "securitySchemes": copy.deepcopy(SECURITY_SCHEMES)},
    }


def build_openapi(app: web.Application) -> dict[str, Any]:
    """Assemble the document for ``app`` from every plugin's ``dlinfer_openapi``."""
    spec = base_document()
    app[PLUGINS].hook.dlinfer_openapi(spec=spec, app=app)
    spec["paths"] = dict(sorted(spec["paths"].items()))
    return spec


def openapi_document(app: web.Application) -> dict[str, Any]:
    """The application's document, built on first use."""
    cache = app.get(_CACHE)
    if cache is None:  # an application not built with this plugin registered
        return build_openapi(app)
    if "spec" not in cache:
        cache["spec"] = build_openapi(app)
    return cache["spec"]


def registered_routes(app: web.Application) -> list[tuple[str, str]]:
    """Every ``(method, path)`` the application answers, HEAD (added by aiohttp beside GET) left out."""
    out = []
    for resource in app.router.resources():
        path = resource.canonical
        for route in resource:
            if route.method != "HEAD":
                out.append((route.method.lower(), path))
    return sorted(set(out))


def undescribed_routes(app: web.Application, spec: dict[str, Any] | None = None) -> list[str]:
    """Routes of ``app`` with no operation in the document, as ``"GET /path"``."""
    paths = (spec or openapi_document(app))["paths"]
    return [f"{m.upper()} {p}" for m, p in registered_routes(app) if m not in paths.get(p, {})]


# ------------------------------------------------------------------------------- handlers


async def get_openapi(request: web.Request) -> web.Response:
    body = orjson.dumps(openapi_document(request.app))
    return web.Response(body=body, content_type="application/json")


# ---------------------------------------------------------------------------------- hooks


@hookimpl
def dlinfer_routes(app: web.Application, repository: Any) -> None:
    app[_CACHE] = {}
    app.router.add_get(SPEC_PATH, get_openapi)


@hookimpl
def dlinfer_openapi(spec: dict[str, Any], app: web.Application) -> None:
    spec["paths"][SPEC_PATH] = {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "tags": ["meta"],
            "responses": {"200": json_response("the OpenAPI 3.1 document of this node", {"type": "object"})},
        }
    }
