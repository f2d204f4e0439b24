"""``dlinfer_http_middlewares``: plugins' aiohttp middlewares on a real node and a real gateway.

Two single-file plugins loaded through ``plugins_dir``: one stamps a header on every answer,
one refuses requests without an API key by raising ``Unauthenticated``, which the core's error
middleware turns into its JSON error (401) before any request body is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from dlinfer.errors import PluginLoadError
from dlinfer.plugins import Plugins
from dlinfer.server import create_app
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, wait_for, write_model

STAMP = """
from aiohttp import web
from dlinfer import hookimpl

@web.middleware
async def stamp(request, handler):
    response = await handler(request)
    response.headers["X-Served-By"] = "stamp-plugin"
    return response

@hookimpl
def dlinfer_http_middlewares():
    return [stamp]
"""

API_KEY = """
from aiohttp import web
from dlinfer import hookimpl
from dlinfer.errors import Unauthenticated

OPEN = ("/v2/health/live",)

def make(key):
    @web.middleware
    async def require_api_key(request, handler):
        if request.path not in OPEN and request.headers.get("X-Api-Key") != key:
            raise Unauthenticated("missing or wrong X-Api-Key")
        return await handler(request)
    return require_api_key

@hookimpl
def dlinfer_http_middlewares(config):
    return [make(config.plugin_settings("api_key")["key"])]
"""

OLD_STYLE = """
from dlinfer import hookimpl

async def factory(app, handler):
    return handler

@hookimpl
def dlinfer_http_middlewares():
    return [factory]
"""

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
KEY = {"X-Api-Key": "s3cret"}


def _plugins_dir(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "local_plugins"
    folder.mkdir()
    for name, source in files.items():
        (folder / f"{name}.py").write_text(source)
    return folder


def _node_config(tmp_path: Path, folder: Path, **tables: dict) -> object:
    repo = tmp_path / "models"
    write_model(repo, "linear", files={"model.onnx": onnx_linear_model()})
    return node_config(repo, plugins={"plugins_dir": str(folder), "api_key": {"key": "s3cret"}}, **tables)


def test_plugin_middlewares_add_headers_and_refuse_in_the_core_error_format(tmp_path: Path) -> None:
    folder = _plugins_dir(tmp_path, a_stamp=STAMP, b_api_key=API_KEY)
    with RunningNode(_node_config(tmp_path, folder)) as node:
        live = requests.get(f"{node.url}/v2/health/live", timeout=10)
        assert live.status_code == 200 and live.headers["X-Served-By"] == "stamp-plugin"

        refused = requests.post(f"{node.url}/v2/models/linear/infer", json=BODY, timeout=10)
        assert refused.status_code == 401
        assert refused.headers["Content-Type"].startswith("application/json")
        assert refused.json() == {"error": "missing or wrong X-Api-Key"}

        ok = requests.post(f"{node.url}/v2/models/linear/infer", json=BODY, headers=KEY, timeout=10)
        assert ok.status_code == 200, ok.text
        assert ok.headers["X-Served-By"] == "stamp-plugin"
        assert ok.json()["outputs"][0]["shape"] == [1, 3]


def test_a_refused_request_holds_no_body_budget(tmp_path: Path) -> None:
    """Outside the body budget: an unauthenticated client cannot take the budget from others."""
    folder = _plugins_dir(tmp_path, api_key=API_KEY)
    limits = {"max_inflight_body_bytes": 1024, "max_body_bytes": 1024}
    with RunningNode(_node_config(tmp_path, folder, limits=limits)) as node:
        refused = requests.post(f"{node.url}/v2/models/linear/infer", data=b"x" * 4096, timeout=10)
        assert refused.status_code == 401  # not 413: the key is checked before the body is looked at


def test_gateway_applies_plugin_middlewares(tmp_path: Path) -> None:
    """dlinfer-lb's gateway is the node's application: the same middlewares guard the proxy."""
    pytest.importorskip("dlinfer_lb")
    backend_repo = tmp_path / "backend"
    write_model(backend_repo, "linear", files={"model.onnx": onnx_linear_model()})
    with RunningNode(node_config(backend_repo)) as backend:
        folder = _plugins_dir(tmp_path, a_stamp=STAMP, b_api_key=API_KEY)
        gateway = node_config(
            tmp_path / "empty",
            plugins={
                "plugins_dir": str(folder),
                "api_key": {"key": "s3cret"},
                "lb": {"enabled": True, "nodes": [backend.url], "health": {"interval_s": 0.2}},
            },
        )
        (tmp_path / "empty").mkdir()
        with RunningNode(gateway) as gw:
            wait_for(
                lambda: requests.get(f"{gw.url}/v2/models/linear/ready", headers=KEY, timeout=5).status_code == 200,
                "the gateway sees the backend's model ready",
            )
            refused = requests.post(f"{gw.url}/v2/models/linear/infer", json=BODY, timeout=10)
            assert refused.status_code == 401 and refused.json() == {"error": "missing or wrong X-Api-Key"}
            ok = requests.post(f"{gw.url}/v2/models/linear/infer", json=BODY, headers=KEY, timeout=10)
            assert ok.status_code == 200, ok.text
            assert ok.headers["X-Served-By"] == "stamp-plugin"


def test_old_style_middleware_is_refused_with_the_plugin_named(tmp_path: Path) -> None:
    folder = _plugins_dir(tmp_path, old=OLD_STYLE)
    config = _node_config(tmp_path, folder)
    with pytest.raises(
        PluginLoadError, match=r"dlinfer_http_middlewares of plugin 'old' returned .*@aiohttp.web.middleware"
    ):
        create_app(config, Plugins(config).load())
