"""Fixtures shared by the core tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlinfer.testing import onnx_linear_model, write_model


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A model repository with one tiny ONNX classifier, ``linear`` version 1."""
    root = tmp_path / "models"
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model()})
    return root
