"""dlinfer-trt on a machine without a GPU: every decision that does not need one."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dlinfer.api import (
    ModelConfig,
    ModelLoadError,
    PluginLoadError,
    Plugins,
    TensorSpec,
    hookimpl,
    model_config_from_dict,
    node_config_from_dict,
)
from dlinfer.api.testing import RunningNode, node_config, onnx_linear_model, plugin_distribution, write_model
from dlinfer_trt import availability
from dlinfer_trt.cache import EngineCache, EngineKey, decide
from dlinfer_trt.calibration import calibration_batches, read_calibration_rows
from dlinfer_trt.customops import custom_ops, missing_plugins, plugin_creator, require_plugins
from dlinfer_trt.profiles import batch_profile

A100 = availability.GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", "10.3.0")
H100 = availability.GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "10.3.0")


def _key(gpu: availability.GpuInfo = A100, precision: str = "fp16", sha: str = "ab" * 32) -> EngineKey:
    return EngineKey(sha, gpu, precision, "x:8x3x224x224", ("MyOp",))


# ------------------------------------------------------------------ profiles


def test_profile_from_batch_axis_and_preferred_sizes() -> None:
    specs = [TensorSpec("x", "FP32", (-1, 3, 224, 224)), TensorSpec("mask", "BOOL", (-1, 10))]
    cfg = model_config_from_dict(
        {"max_batch_size": 16, "dynamic_batching": {"preferred_batch_size": [4, 8, 64]}}, "config.toml"
    )
    profile = batch_profile(specs, cfg, 16)
    assert profile.shapes["x"] == ((1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224))
    assert profile.shapes["mask"] == ((1, 10), (8, 10), (16, 10))
    assert batch_profile(specs, ModelConfig(), 16).shapes["x"][1] == (16, 3, 224, 224)


def test_profile_needs_fixed_non_batch_dims() -> None:
    specs = [TensorSpec("x", "FP32", (-1, 3, -1, -1))]
    with pytest.raises(ModelLoadError, match=r"dynamic dimensions besides the batch axis \[-1, 3, -1, -1\]"):
        batch_profile(specs, ModelConfig(), 8)
    cfg = model_config_from_dict({"input": [{"name": "x", "datatype": "FP32", "shape": [3, 128, 96]}]}, "c.toml")
    assert batch_profile(specs, cfg, 8).shapes["x"] == ((1, 3, 128, 96), (8, 3, 128, 96), (8, 3, 128, 96))


def test_profile_without_batching_is_fixed() -> None:
    profile = batch_profile([TensorSpec("x", "FP32", (1, 4))], ModelConfig(), 0)
    assert profile.shapes["x"] == ((1, 4), (1, 4), (1, 4))


# --------------------------------------------------------------------- cache


def test_cache_decisions() -> None:
    wanted = _key()
    assert decide(None, wanted, allow_rebuild=False) == "build"
    assert decide(_key(), wanted, allow_rebuild=False) == "use"
    assert decide(_key(gpu=H100), wanted, allow_rebuild=True) == "build"
    assert decide(_key(precision="fp32"), wanted, allow_rebuild=True) == "build"
    with pytest.raises(ModelLoadError) as info:
        decide(_key(gpu=H100), wanted, allow_rebuild=False)
    msg = str(info.value)
    assert "built for NVIDIA H100 80GB HBM3 (compute capability 9.0)" in msg
    assert "this node has NVIDIA A100-SXM4-80GB (compute capability 8.0)" in msg
    assert "only run on the GPU model and TensorRT version they were built with" in msg
    other_trt = availability.GpuInfo(A100.name, A100.compute_capability, "10.8.0")
    with pytest.raises(ModelLoadError, match=r"with TensorRT 10\.8\.0, but this node has"):
        decide(_key(gpu=other_trt), wanted, allow_rebuild=False)
    with pytest.raises(ModelLoadError, match="the model, precision, profile or operator plugins changed"):
        decide(_key(sha="cd" * 32), wanted, allow_rebuild=False)


def test_key_digest_covers_every_field() -> None:
    digests = {_key().digest(), _key(gpu=H100).digest(), _key(precision="int8").digest(), _key(sha="0" * 64).digest()}
    assert len(digests) == 4
    assert _key().digest() == _key().digest()


def test_cache_store_lookup_round_trip(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    key = _key()
    assert cache.lookup(key) is None
    assert cache.store(key, b"engine-bytes") is not None
    assert cache.lookup(key) == key
    assert cache.load(key) == b"engine-bytes"
    cache.paths(key)[1].write_text("{not json")
    assert cache.lookup(key) is None  # a damaged record means: build again


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_cache_on_read_only_folder_is_not_fatal(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert EngineCache(ro / "cache").store(_key(), b"x") is None


# --------------------------------------------------------------- calibration


def test_calibration_rows_and_batches(tmp_path: Path) -> None:
    specs = [TensorSpec("x", "FP32", (-1, 2)), TensorSpec("ids", "INT64", (-1, 3))]
    for i, rows in enumerate((3, 2)):
        np.savez(tmp_path / f"s{i}.npz", x=np.full((rows, 2), i, np.float64), ids=np.arange(rows * 3).reshape(rows, 3))
    np.savez(tmp_path / "s2.npz", x=np.full(2, 9.0), ids=np.zeros(3))  # one row without batch axis
    rows = read_calibration_rows(tmp_path, specs)
    assert rows["x"].shape == (6, 2) and rows["x"].dtype == np.float32 and rows["ids"].dtype == np.int64
    batches = list(calibration_batches(rows, 4))
    assert [b["x"].shape for b in batches] == [(4, 2), (4, 2)]
    np.testing.assert_array_equal(batches[1]["x"][:, 0], [1, 9, 0, 0])  # padded by wrapping around


def test_calibration_errors(tmp_path: Path) -> None:
    specs = [TensorSpec("x", "FP32", (-1, 2)), TensorSpec("y", "FP32", (-1, 2))]
    with pytest.raises(ModelLoadError, match=r"no \*\.npz or \*\.npy files"):
        read_calibration_rows(tmp_path, specs)
    np.save(tmp_path / "a.npy", np.zeros((2, 2)))
    with pytest.raises(ModelLoadError, match=r"a.npy: .npy samples only fit single-input models"):
        read_calibration_rows(tmp_path, specs)
    (tmp_path / "a.npy").unlink()
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 2)))
    with pytest.raises(ModelLoadError, match=r"b.npz: sample lacks inputs \['y'\]"):
        read_calibration_rows(tmp_path, specs)


# -------------------------------------------------------------- custom ops


def _graph_with_custom_ops() -> onnx.ModelProto:
    then_branch = helper.make_graph(
        [helper.make_node("FancyAct", ["x"], ["t"], domain="com.example")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])],
    )
    nodes = [
        helper.make_node("MyOp", ["x"], ["y"], domain="com.example"),
        helper.make_node("Relu", ["y"], ["z"]),
        helper.make_node("If", ["cond"], ["out"], then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])


def test_custom_ops_found_in_graph_and_subgraphs() -> None:
    model = _graph_with_custom_ops()
    assert custom_ops(model) == [("com.example", "FancyAct"), ("com.example", "MyOp")]
    assert missing_plugins(custom_ops(model), ["MyOp"]) == [("com.example", "FancyAct")]
    require_plugins(model, ["MyOp", "FancyAct"])
    with pytest.raises(ModelLoadError) as info:
        require_plugins(model, ["MyOp"])
    assert "FancyAct (domain 'com.example')" in str(info.value)
    assert "dlinfer_trt_plugins" in str(info.value)
    assert custom_ops(onnx.load_from_string(onnx_linear_model())) == []


def test_trt_plugins_catalogue_names_its_distribution() -> None:
    import dlinfer_trt.plugin

    class Creator:
        name = "MyCustomOp"

    class TrtOps:
        @hookimpl
        def dlinfer_trt_plugins(self) -> list[Any]:
            return [Creator]

    plugins = Plugins(node_config_from_dict({}))
    plugins.register(TrtOps(), "trt_ops", "dlinfer-myops")  # before the plugin that declares the hook
    plugins.register(dlinfer_trt.plugin, "trt", "dlinfer-trt")
    plugins.load(entry_points=False)
    assert plugins.declared["trt"] == ("dlinfer_trt_plugins",)
    entry = plugins.registry("dlinfer_trt_plugins")["MyCustomOp"]
    assert (entry.obj, entry.plugin, entry.distribution) == (Creator, "trt_ops", "dlinfer-myops")


OPERATOR_PLUGIN = """
from dlinfer import hookimpl

class MyOp:
    name = "MyOp"
    library = "/nonexistent/libmyop.so"

@hookimpl
def dlinfer_trt_plugins():
    return [MyOp]
"""


def test_operator_plugin_without_dlinfer_trt_is_refused_by_name(tmp_path: Path, monkeypatch) -> None:
    """A third-party operator plugin on a node without dlinfer-trt (only it is autoloaded here)
    stops the node with its name and the hook, not deep inside pluggy; listed as optional, the
    node starts without it."""
    plugin_distribution(
        tmp_path, "dlinfer-myops", {"myops": "dlinfer_test_myops"}, {"dlinfer_test_myops": OPERATOR_PLUGIN}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DLINFER_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("DLINFER_PLUGINS", "myops")
    with pytest.raises(PluginLoadError) as info:
        Plugins(node_config_from_dict({})).load()
    message = str(info.value)
    assert "plugin 'myops' (dlinfer-myops) implements dlinfer_trt_plugins, which no loaded plugin declares" in message
    assert "optionalhook=True" in message
    plugins = Plugins(node_config_from_dict({"plugins": {"optional": ["myops"]}})).load()
    assert {p.name: p.status for p in plugins.list()}["myops"] == "failed"
    monkeypatch.setenv("DLINFER_PLUGINS", "myops,trt")
    assert "MyOp" in Plugins(node_config_from_dict({})).load().registry("dlinfer_trt_plugins")


def test_plugin_creator_from_factory_class_or_object() -> None:
    class Creator:
        name = "MyOp"
        plugin_namespace = ""

    class LightEntry:
        """Names the op; builds the creator only when asked (as a tensorrt-free hook module does)."""

        name = "MyOp"
        made: typing.ClassVar[list[Creator]] = []

        @classmethod
        def creator(cls) -> Creator:
            cls.made.append(Creator())
            return cls.made[-1]

    assert plugin_creator(LightEntry) is LightEntry.made[0]
    assert type(plugin_creator(Creator)) is Creator
    instance = Creator()
    assert plugin_creator(instance) is instance

    class Misnamed(LightEntry):
        name = "OtherOp"

    with pytest.raises(ModelLoadError, match="'OtherOp': its creator is named 'MyOp'"):
        plugin_creator(Misnamed)


# ------------------------------------------------------ without a GPU: fallback


@pytest.fixture
def no_gpu() -> None:
    gpu, reason = availability.status()
    if gpu is not None:
        pytest.skip("a GPU is present: the fallback path does not apply")
    assert reason


def test_pipeline_falls_back_or_refuses(no_gpu: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model(tmp_path, "plain", 1, {"model.onnx": onnx_linear_model()}, config={"optimize": ["trt"]})
    write_model(
        tmp_path,
        "strict",
        1,
        {"model.onnx": onnx_linear_model()},
        config={"optimize": ["trt"], "optimize_options": {"trt": {"require_gpu": True}}},
    )
    write_model(
        tmp_path,
        "typo",
        1,
        {"model.onnx": onnx_linear_model()},
        config={"optimize": ["trt"], "optimize_options": {"trt": {"precision": "fp8"}}},
    )
    write_model(tmp_path, "engine", 1, {"model.plan": b"\x00serialized engine"})
    with caplog.at_level("WARNING", logger="dlinfer.trt"), RunningNode(node_config(tmp_path)) as node:
        from dlinfer.api.testing import V2Client

        client = V2Client(node.url)
        x = np.ones((2, 4), np.float32)
        assert client.infer("plain", {"x": x})["probs"].shape == (2, 3)
        assert client.metadata("plain")["platform"] == "onnxruntime_onnx"
        index = {r["name"]: r for r in client.request("POST", "/v2/repository/index")}
    assert "TensorRT unavailable" in caplog.text and "serving it as loaded" in caplog.text
    assert index["strict"]["state"] == "UNAVAILABLE"
    assert "TensorRT is required (require_gpu = true) but unavailable" in index["strict"]["reason"]
    assert "typo/config.toml: optimize_options.trt.precision: expected one of" in index["typo"]["reason"]
    assert "model.plan is a TensorRT engine, and TensorRT is unavailable here" in index["engine"]["reason"]


def test_plugin_imports_light_and_lists_unavailable(no_gpu: None) -> None:
    code = (
        "import sys, dlinfer_trt.plugin; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    listing = subprocess.run([sys.executable, "-m", "dlinfer.cli", "plugins", "list"], capture_output=True, text=True)
    row = next(ln for ln in listing.stdout.splitlines() if ln.startswith("trt "))
    assert row.split()[:4] == ["trt", "dlinfer-trt", "0.1.0", "unavailable"]
    assert "pip install 'dlinfer[trt]'" in row or "no CUDA GPU" in row
