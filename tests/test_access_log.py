"""The HTTP access log, and log records reaching the stderr of the moment."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
import requests

from dlinfer.logs import JsonFormatter, StderrHandler
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_model

X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dlinfer.access"]


def test_access_log_has_one_record_per_request(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(tmp_path, "linear", 1, {"model.onnx": onnx_linear_model()})
    with caplog.at_level(logging.INFO, logger="dlinfer.access"):
        with RunningNode(node_config(tmp_path, server={"access_log": True})) as node:
            ok = requests.post(f"{node.url}/v2/models/linear/infer?trace=1", json=X, timeout=10)
            missing = requests.get(f"{node.url}/v2/models/nope", headers={"User-Agent": "probe/1"}, timeout=10)
    assert ok.status_code == 200 and missing.status_code == 404
    by_path = {r.http["path"]: r for r in _access(caplog)}  # type: ignore[attr-defined]
    infer = by_path["/v2/models/linear/infer?trace=1"].http  # type: ignore[attr-defined]
    assert infer["method"] == "POST" and infer["status"] == 200 and infer["remote"] == "127.0.0.1"
    assert infer["bytes_sent"] > len(ok.content) and infer["duration_ms"] > 0  # headers too
    nope = by_path["/v2/models/nope"]
    assert nope.http["status"] == 404 and nope.http["user_agent"] == "probe/1"  # type: ignore[attr-defined]
    assert '"GET /v2/models/nope" 404' in nope.getMessage()
    # The JSON log format carries the same facts as fields.
    doc = json.loads(JsonFormatter().format(nope))
    assert doc["logger"] == "dlinfer.access" and doc["http"]["status"] == 404


def test_access_log_is_off_by_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(tmp_path, "linear", 1, {"model.onnx": onnx_linear_model()})
    with caplog.at_level(logging.INFO, logger="dlinfer.access"):
        with RunningNode(node_config(tmp_path)) as node:
            assert requests.post(f"{node.url}/v2/models/linear/infer", json=X, timeout=10).status_code == 200
    assert _access(caplog) == []


def test_log_lines_go_to_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = StderrHandler()  # made while one stderr is in place ...
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)  # ... and used after it was replaced
    handler.emit(logging.LogRecord("dlinfer", logging.WARNING, __file__, 1, "after the swap", None, None))
    assert "after the swap" in swapped.getvalue()
