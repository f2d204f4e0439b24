"""Built-in plugin: the operator console, a static page over the public HTTP API.

The page, its script and its style sheet are package data
(``dlinfer/server/console/``): no build step, nothing fetched from elsewhere.
``GET /-/console`` serves the page and ``GET /`` redirects there. The page reads
everything it shows from the node's API, including the OpenAPI document (which
optional endpoints exist, whether model control needs the token).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from ..plugins import hookimpl
from .openapi import not_found

CONSOLE_PATH = "/-/console"
#: Files of the console a browser may fetch besides the page, with their content types.
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}


def _file(name: str) -> bytes:
    return resources.files("dlinfer.server").joinpath("console", name).read_bytes()


async def get_console(request: web.Request) -> web.Response:
    return web.Response(body=_file("index.html"), content_type="text/html", charset="utf-8")


async def get_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=_file(name), content_type=ASSETS[name], charset="utf-8")


async def get_root(request: web.Request) -> web.Response:
    raise web.HTTPFound(CONSOLE_PATH)


@hookimpl
def dlinfer_routes(app: web.Application, repository: Any) -> None:
    app.router.add_get("/", get_root)
    app.router.add_get(CONSOLE_PATH, get_console)
    app.router.add_get(CONSOLE_PATH + "/{asset}", get_asset)


@hookimpl
def dlinfer_openapi(spec: dict[str, Any], app: web.Application) -> None:
    text = {"schema": {"type": "string"}}
    spec["paths"].update(
        {
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
                    "responses": {"200": {"description": "the console page", "content": {"text/html": text}}},
                }
            },
            CONSOLE_PATH + "/{asset}": {
                "get": {
                    "summary": "A script or style sheet of the console",
                    "operationId": "consoleAsset",
                    "tags": ["console"],
                    "parameters": [
                        {"name": "asset", "in": "path", "required": True, "schema": {"enum": sorted(ASSETS)}}
                    ],
                    "responses": {
                        "200": {"description": "the file", "content": {t: text for t in sorted(set(ASSETS.values()))}},
                        "404": not_found("asset"),
                    },
                }
            },
        }
    )
