"""The OpenAPI document: valid OpenAPI 3.1, complete (every registered route
described), assembled from the plugins' ``dlinfer_openapi`` hooks, printed by the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest
import requests
from aiohttp import web
from openapi_spec_validator import validate

from dlinfer import __version__, hookimpl
from dlinfer.cli import main
from dlinfer.config import NodeConfig
from dlinfer.plugins import Plugins
from dlinfer.server.openapi import error_response, json_response, registered_routes, undescribed_routes
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_model

LOAD = "/v2/repository/models/{model}/load"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """A node with every installed plugin, as an operator would run it."""
    root = tmp_path_factory.mktemp("models")
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(root, repository={"startup_models": ["linear"]})) as n:
        yield n


def test_served_document_is_valid_openapi_31(node: RunningNode) -> None:
    r = requests.get(f"{node.url}/v2/-/openapi.json")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    spec = r.json()
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema
    assert spec["openapi"] == "3.1.0" and spec["info"]["version"] == __version__
    infer = spec["paths"]["/v2/models/{model}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferenceRequest"
    }
    assert {"200", "400", "404", "413", "429", "503", "504"} <= set(infer["responses"])


def test_answers_of_every_installed_plugin_conform(node: RunningNode) -> None:
    """The plugin list and the index carry what every installed plugin reports (statuses, reasons)."""
    spec = requests.get(f"{node.url}/v2/-/openapi.json").json()
    for method, path in (("get", "/v2/-/plugins"), ("post", "/v2/repository/index"), ("get", "/v2")):
        schema = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        answer = requests.request(method, node.url + path).json()
        jsonschema.validate(answer, {**schema, "components": spec["components"]})


def test_every_registered_route_is_described(node: RunningNode) -> None:
    """The meta-test: a plugin that adds a route must describe it in dlinfer_openapi."""
    routes = registered_routes(node.app)
    # Core's own routes are there, so the walk over the router sees what a client can call.
    assert ("post", "/v2/models/{model}/infer") in routes and ("get", "/v2/-/openapi.json") in routes
    assert undescribed_routes(node.app) == []


class Undescribed:
    """A plugin that adds a route and forgets to describe it."""

    @hookimpl
    def dlinfer_routes(self, app: web.Application, repository: object) -> None:
        app.router.add_post("/v2/-/forgotten/{item}", self.handler)

    async def handler(self, request: web.Request) -> web.Response:
        return web.json_response({})


class Described(Undescribed):
    """The same route, described."""

    @hookimpl
    def dlinfer_openapi(self, spec: dict, app: web.Application) -> None:
        spec["paths"]["/v2/-/forgotten/{item}"] = {
            "post": {
                "operationId": "forgotten",
                "parameters": [{"name": "item", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": json_response("ok", {"type": "object"}), "404": error_response("no such item")},
            }
        }


def _node_with(repo: Path, plugin: object) -> RunningNode:
    config = node_config(repo)
    plugins = Plugins(config).load()
    plugins.register(plugin, "extra")
    return RunningNode(config, plugins)


def test_meta_test_catches_an_undescribed_route(repo: Path) -> None:
    with _node_with(repo, Undescribed()) as n:
        assert undescribed_routes(n.app) == ["POST /v2/-/forgotten/{item}"]


def test_plugin_describes_its_routes_through_the_hook(repo: Path) -> None:
    with _node_with(repo, Described()) as n:
        spec = requests.get(f"{n.url}/v2/-/openapi.json").json()
        validate(spec)
        assert spec["paths"]["/v2/-/forgotten/{item}"]["post"]["operationId"] == "forgotten"
        assert undescribed_routes(n.app) == []


def test_control_token_shows_as_security_requirement(repo: Path) -> None:
    with RunningNode(node_config(repo)) as n:
        assert requests.get(f"{n.url}/v2/-/openapi.json").json()["paths"][LOAD]["post"]["security"] == []
    with RunningNode(node_config(repo, repository={"control_token": "s3cret"})) as n:
        spec = requests.get(f"{n.url}/v2/-/openapi.json").json()
        assert spec["paths"][LOAD]["post"]["security"] == [{"controlToken": []}]
        assert spec["components"]["securitySchemes"]["controlToken"]["scheme"] == "bearer"
        # The document describes what the node does: without the token, 401.
        assert requests.post(f"{n.url}/v2/repository/models/linear/load").status_code == 401


def test_cli_prints_the_served_document(node: RunningNode, repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["openapi", "--model-repository", str(repo)]) == 0
    printed = json.loads(capsys.readouterr().out)
    validate(printed)
    served = requests.get(f"{node.url}/v2/-/openapi.json").json()
    assert printed == served


def test_gateway_document_describes_its_routes(
    node: RunningNode, gateway_config: Callable[[list[str]], NodeConfig]
) -> None:
    with RunningNode(gateway_config([node.url])) as gateway:
        assert ("get", "/v2/-/nodes") in registered_routes(gateway.app)
        assert undescribed_routes(gateway.app) == []
        spec = requests.get(f"{gateway.url}/v2/-/openapi.json").json()
        validate(spec)
        assert "502" in spec["paths"]["/v2/models/{model}/infer"]["post"]["responses"]
        assert spec["paths"]["/v2/-/nodes"]["post"]["security"] == [{"registrationToken": []}]
        # The gateway's answer conforms to the schema its plugin published.
        nodes = requests.get(f"{gateway.url}/v2/-/nodes").json()
        jsonschema.validate(nodes, {"$ref": "#/components/schemas/GatewayNodes", "components": spec["components"]})
        assert [n["url"] for n in nodes["nodes"]] == [node.url]
