"""The example TensorRT plugin on a machine without a GPU: found through its installed
entry point, named by its hook, light to import; the op's reference and model are right."""

from __future__ import annotations

import importlib.metadata as md
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dlinfer.api import ModelLoadError, Plugins, node_config_from_dict
from dlinfer.api.testing import RunningNode, V2Client, node_config
from dlinfer_trt import availability
from dlinfer_trt.customops import custom_ops, require_plugins
from dlinfer_trt_scaledtanh import DOMAIN, OP_TYPE, scaled_tanh, scaled_tanh_model
from dlinfer_trt_scaledtanh.op import read_attributes

DISTRIBUTION = "dlinfer-trt-scaledtanh"


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    """Every installed plugin, loaded from entry points as a node loads them at start."""
    return Plugins(node_config_from_dict({})).load()


def test_entry_point_provides_the_op(plugins: Plugins) -> None:
    (ep,) = [e for e in md.entry_points(group="dlinfer.plugins") if e.dist and e.dist.name == DISTRIBUTION]
    assert (ep.name, ep.value) == ("scaledtanh", "dlinfer_trt_scaledtanh")
    info = {p.name: p for p in plugins.list()}["scaledtanh"]
    assert (info.distribution, info.status, info.hooks) == (DISTRIBUTION, "loaded", ("dlinfer_trt_plugins",))
    entry = plugins.registry("dlinfer_trt_plugins")[OP_TYPE]
    assert entry.distribution == DISTRIBUTION
    assert entry.obj.name == "ScaledTanh"
    assert callable(entry.obj.creator)


def test_graph_with_the_op_needs_the_plugin(plugins: Plugins) -> None:
    model = onnx.load_from_string(scaled_tanh_model(2.0, 0.5, np.zeros(4, np.float32)))
    assert custom_ops(model) == [(DOMAIN, OP_TYPE)]
    require_plugins(model, plugins.registry("dlinfer_trt_plugins"))
    with pytest.raises(ModelLoadError) as info:
        require_plugins(model, [])
    message = str(info.value)
    assert "ScaledTanh (domain 'dlinfer.example')" in message
    assert "dlinfer_trt_plugins" in message


def test_model_carries_the_attributes_and_the_domain() -> None:
    bias = np.array([0.5, -1.0, 2.0], np.float32)
    model = onnx.load_from_string(scaled_tanh_model(2.0, 0.5, bias))
    node = model.graph.node[0]
    assert (node.op_type, node.domain) == (OP_TYPE, DOMAIN)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"alpha": 2.0, "beta": 0.5}
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 13), (DOMAIN, 1)}
    (init,) = model.graph.initializer
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), bias)
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 3]


def test_reference_matches_hand_computation() -> None:
    x = np.array([[0.0, 1.0, -2.0, 0.5], [3.0, -0.25, 10.0, -10.0]], np.float32)
    by_hand = [[2.0 * math.tanh(0.5 * v) for v in row] for row in x.tolist()]
    np.testing.assert_allclose(scaled_tanh(x, 2.0, 0.5), by_hand, rtol=1e-6, atol=1e-7)
    assert scaled_tanh(x, 2.0, 0.5).dtype == np.float32
    half = scaled_tanh(x.astype(np.float16), 2.0, 0.5)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), by_hand, atol=2e-3)
    # the defaults: plain tanh
    np.testing.assert_allclose(scaled_tanh(x), np.tanh(x), rtol=1e-6)
    with pytest.raises(TypeError, match="float32 or float16"):
        scaled_tanh(np.arange(3))


def test_attributes_from_plugin_fields() -> None:
    fields = [("beta", np.array([0.25], np.float32)), ("plugin_version", b"1")]
    assert read_attributes(fields) == {"alpha": 1.0, "beta": 0.25}
    assert read_attributes([("alpha", np.array([3.0], np.float32))]) == {"alpha": 3.0, "beta": 1.0}
    with pytest.raises(ValueError, match="'alpha' must be one float, not 2 values"):
        read_attributes([("alpha", np.array([1.0, 2.0], np.float32))])


def test_entry_point_module_imports_no_tensorrt_or_cupy() -> None:
    # What a node does at start: load every entry point and build the hook's catalogue.
    code = (
        "import sys\n"
        "from dlinfer.config import node_config_from_dict\n"
        "from dlinfer.plugins import Plugins\n"
        "plugins = Plugins(node_config_from_dict({})).load()\n"
        "assert 'ScaledTanh' in plugins.registry('dlinfer_trt_plugins')\n"
        "assert 'dlinfer_trt_scaledtanh' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cupy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_node_without_gpu_starts_without_building_the_creator(tmp_path: Path) -> None:
    if availability.status()[0] is not None:
        pytest.skip("a GPU is present: the node registers the plugin at start")
    with RunningNode(node_config(tmp_path)) as node:
        client = V2Client(node.url)
        assert client.ready()
        rows = {p["name"]: p for p in client.request("GET", "/v2/-/plugins")}
    assert rows["scaledtanh"]["status"] == "loaded"
    assert rows["scaledtanh"]["hooks"] == ["dlinfer_trt_plugins"]
    assert "dlinfer_trt_scaledtanh.trt_plugin" not in sys.modules
