"""Fixtures shared by the core tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dlinfer.config import NodeConfig, node_config_from_dict
from dlinfer.plugins import BUILTIN_PLUGINS
from dlinfer.testing import free_port, onnx_linear_model, write_model


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A model repository with one tiny ONNX classifier, ``linear`` version 1."""
    root = tmp_path / "models"
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model()})
    return root


@pytest.fixture
def gateway_config(tmp_path: Path) -> Callable[[list[str]], NodeConfig]:
    """Build the config of a dlinfer-lb gateway in front of the given node URLs (the
    node's own V2 frontends off, the gateway's on, registration token ``t``)."""
    pytest.importorskip("dlinfer_lb")
    disable = [p for p in ("dlinfer.server.v2_http", "dlinfer.server.v2_grpc") if p in BUILTIN_PLUGINS]

    def build(nodes: list[str]) -> NodeConfig:
        lb = {"enabled": True, "nodes": nodes, "health": {"interval_s": 0.2}, "registration_token": "t"}
        data = {
            "server": {"host": "127.0.0.1", "http_port": free_port(), "grpc_port": free_port()},
            "repository": {"path": "no-models"},
            "plugins": {"disable": disable, "lb": lb},
        }
        return node_config_from_dict(data, source=str(tmp_path / "gateway.toml"), base_dir=str(tmp_path))

    return build
