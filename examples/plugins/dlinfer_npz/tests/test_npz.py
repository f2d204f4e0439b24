"""The example plugin, tested the way a third-party author would: with dlinfer's fixtures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import dlinfer_npz
from dlinfer.api.testing import V2Error, write_model
from dlinfer_npz.balancer import FailoverBalancer


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_npz_model_serves(dlinfer_server, dlinfer_repository: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.array([1, 2, 3], np.float32)
    write_model(dlinfer_repository, "linear", 1, {"weights.npz": _npz(W=w, b=b)})
    write_model(dlinfer_repository, "corrupt", 1, {"weights.npz": b"PK\x03\x04 not really"})
    node = dlinfer_server(plugins=[dlinfer_npz], entry_points=False)
    x = np.ones((2, 4), np.float32)
    out = node.client.infer("linear", {"x": x})
    np.testing.assert_allclose(out["y"], x @ w + b)
    assert node.client.metadata("linear")["platform"] == "npz_linear"
    with pytest.raises(V2Error) as info:
        node.client.infer("corrupt", {"x": x})
    assert info.value.status == 503 and "weights.npz: not a weights file" in info.value.message


def test_failover_balancer_order_and_recovery() -> None:
    now = [0.0]
    lb = FailoverBalancer(cooldown_s=5, clock=lambda: now[0])
    nodes = ["a", "b", "c"]
    assert lb.pick("m", nodes) == "a"
    lb.observe("a", "failure", 0.1)
    assert lb.pick("m", nodes) == "b"
    lb.observe("b", False, 0.1)
    assert lb.pick("m", nodes) == "c"
    now[0] = 6.0
    assert lb.pick("m", nodes) == "a"
    lb.observe("a", "success", 0.01)
    assert lb.pick("m", nodes) == "a"
    with pytest.raises(LookupError):
        lb.pick("m", [])
