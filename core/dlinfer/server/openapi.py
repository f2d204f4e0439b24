"""Built-in plugin: the node's OpenAPI 3.1 document and the operator console.

The document is assembled from the loaded plugins: each one that adds routes
in ``dlinfer_routes`` describes them in ``dlinfer_openapi``. It is built once
per application, on first request, and served at ``GET /v2/-/openapi.json``;
``dlinfer-core openapi`` prints it. :func:`undescribed_routes` lists routes
that no plugin described (the test suite requires it to be empty).

The console is a static page shipped as package data (``dlinfer/server/console``)
at ``GET /-/console``; ``GET /`` redirects there. It reads everything it shows
from the public API, including this document (to learn which optional
endpoints exist and whether model control is enabled).
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from .. import __version__
from ..plugins import hookimpl
from .app import PLUGINS

OPENAPI_VERSION = "3.1.0"
SPEC_PATH = "/v2/-/openapi.json"
CONSOLE_PATH = "/-/console"
#: Files of the console a browser may fetch, with their content types.
CONSOLE_ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}

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


def _console_file(name: str) -> bytes:
    return resources.files("dlinfer.server").joinpath("console", name).read_bytes()


async def get_console(request: web.Request) -> web.Response:
    return web.Response(body=_console_file("index.html"), content_type="text/html", charset="utf-8")


async def get_console_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in CONSOLE_ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=_console_file(name), content_type=CONSOLE_ASSETS[name], charset="utf-8")


async def get_root(request: web.Request) -> web.Response:
    raise web.HTTPFound(CONSOLE_PATH)


# ---------------------------------------------------------------------------------- hooks


@hookimpl
def dlinfer_routes(app: web.Application, repository: Any) -> None:
    app[_CACHE] = {}
    app.router.add_get(SPEC_PATH, get_openapi)
    app.router.add_get("/", get_root)
    app.router.add_get(CONSOLE_PATH, get_console)
    app.router.add_get(CONSOLE_PATH + "/{asset}", get_console_asset)


@hookimpl
def dlinfer_openapi(spec: dict[str, Any], app: web.Application) -> None:
    html = {"text/html": {"schema": {"type": "string"}}}
    spec["paths"].update(
        {
            SPEC_PATH: {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "tags": ["meta"],
                    "responses": {"200": json_response("the OpenAPI 3.1 document of this node", {"type": "object"})},
                }
            },
            "/": {
                "get": {
                    "summary": "Redirect to the operator console",
                    "operationId": "root",
                    "tags": ["console"],
                    "responses": {
                        "302": {
                            "description": "to the console",
                            "headers": {"Location": {"schema": {"type": "string", "const": CONSOLE_PATH}}},
                        }
                    },
                }
            },
            CONSOLE_PATH: {
                "get": {
                    "summary": "The operator console (HTML)",
                    "operationId": "console",
                    "tags": ["console"],
                    "responses": {"200": {"description": "the console page", "content": html}},
                }
            },
            CONSOLE_PATH + "/{asset}": {
                "get": {
                    "summary": "A script or style sheet of the console",
                    "operationId": "consoleAsset",
                    "tags": ["console"],
                    "parameters": [
                        {"name": "asset", "in": "path", "required": True, "schema": {"enum": sorted(CONSOLE_ASSETS)}}
                    ],
                    "responses": {
                        "200": {
                            "description": "the file",
                            "content": {
                                ct: {"schema": {"type": "string"}} for ct in sorted(set(CONSOLE_ASSETS.values()))
                            },
                        },
                        "404": not_found("asset"),
                    },
                }
            },
        }
    )
