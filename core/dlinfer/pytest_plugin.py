"""pytest fixtures for dlinfer and its plugins, loaded through the ``pytest11`` entry point.

- ``dlinfer_repository``: an empty model repository folder in ``tmp_path``.
- ``dlinfer_server``: a factory starting a real node on free ports; every node it
  starts is stopped after the test::

      def test_my_loader(dlinfer_server, dlinfer_repository):
          write_model(dlinfer_repository, "m", 1, {"weights.npz": data})
          node = dlinfer_server(plugins=[my_plugin_module])
          assert node.client.infer("m", {"x": x})["y"].shape == (1, 3)

``plugins`` registers plugin objects explicitly (besides installed entry points),
so a plugin's own tests work before it is pip-installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .plugins import Plugins
from .testing import RunningNode, V2Client, node_config


@pytest.fixture
def dlinfer_repository(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def dlinfer_server(dlinfer_repository: Path) -> Iterator[Callable[..., RunningNode]]:
    nodes: list[RunningNode] = []

    def start(
        repository: Path | None = None,
        plugins: list[Any] | None = None,
        entry_points: bool = True,
        **tables: dict[str, Any],
    ) -> RunningNode:
        config = node_config(repository or dlinfer_repository, **tables)
        manager = Plugins(config)
        for plugin in plugins or []:
            manager.register(plugin, getattr(plugin, "__name__", type(plugin).__name__), "<test>")
        manager.load(entry_points=entry_points)
        node = RunningNode(config, manager).__enter__()
        node.client = V2Client(node.url)  # type: ignore[attr-defined]
        nodes.append(node)
        return node

    yield start
    for node in reversed(nodes):
        node.__exit__(None, None, None)
