"""The public plugin API (dlinfer.api): complete, documented, enforced, and its Protocols met."""

from __future__ import annotations

import inspect
import pkgutil
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

import dlinfer
import dlinfer.api
import dlinfer.api.testing
from dlinfer.api import (
    BalancerProtocol,
    CodecProtocol,
    LoaderProtocol,
    PostProcessorProtocol,
    PreProcessorProtocol,
    ProcessorProtocol,
    RunnerProtocol,
    node_config_from_dict,
)
from dlinfer.plugins import Plugins

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", [dlinfer.api, dlinfer.api.testing], ids=lambda m: m.__name__)
def test_every_public_name_exists_and_is_documented(module: Any) -> None:
    doc = module.__doc__ or ""
    assert sorted(module.__all__) == sorted(set(module.__all__))
    for name in module.__all__:
        assert hasattr(module, name), name
        assert f"``{name}``" in doc, f"{module.__name__}.{name} is not described in the module docstring"


def test_top_level_exports_are_the_api_objects() -> None:
    for name in dlinfer.__all__:
        if name != "__version__":
            assert getattr(dlinfer, name) is getattr(dlinfer.api, name), name


def _importlinter() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _plugin_packages() -> set[str]:
    """Every top-level package a plugin distribution ships (dlinfer-python also ships
    ``triton_python_backend_utils``, the module Triton's Python models import)."""
    folders = [*ROOT.glob("plugins/*/src/*"), *ROOT.glob("examples/plugins/*/src/*")]
    return {p.name for p in folders if (p / "__init__.py").is_file()}


def test_import_contract_names_every_core_module_and_plugin() -> None:
    """A new core module is internal until dlinfer.api re-exports from it; a new plugin is checked."""
    linter = _importlinter()
    only_api, no_root = linter["contracts"]
    internal = {f"dlinfer.{m.name}" for m in pkgutil.iter_modules(dlinfer.__path__)} - {"dlinfer.api"}
    assert set(only_api["forbidden_modules"]) == internal
    plugins = {p for p in _plugin_packages() if not p.endswith(".egg-info")}
    assert set(linter["root_packages"]) == plugins | {"dlinfer"}
    assert set(only_api["source_modules"]) == plugins
    assert set(no_root["source_modules"]) == plugins | {f"{p}.**" for p in plugins}
    assert no_root["forbidden_modules"] == ["dlinfer"]


# ----------------------------------------------------------------- Protocols


def _check(obj: Any, protocol: type) -> None:
    """``obj`` passes ``isinstance`` and each protocol method accepts the arguments the core passes."""
    assert isinstance(obj, protocol), f"{obj!r} is not a {protocol.__name__}"
    for cls in protocol.__mro__:
        if cls is protocol or getattr(cls, "_is_protocol", False):
            for name, member in vars(cls).items():
                if (inspect.isfunction(member) and not name.startswith("_")) or name == "__call__":
                    n = len(inspect.signature(member).parameters) - 1  # less self
                    try:
                        inspect.signature(getattr(obj, name)).bind(*range(n))
                    except TypeError as exc:
                        pytest.fail(f"{obj!r}.{name} cannot be called as {protocol.__name__} says: {exc}")


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(node_config_from_dict({})).load()


def test_codecs_are_codecs(plugins: Plugins) -> None:
    codecs = plugins.registry("dlinfer_codecs")
    assert {"json", "binary"} <= set(codecs)
    for entry in codecs.values():
        _check(entry.obj, CodecProtocol)


def test_loaders_are_loaders(plugins: Plugins) -> None:
    loaders = plugins.registry("dlinfer_model_formats")
    assert "onnx" in loaders
    for entry in loaders.values():
        _check(entry.obj(plugins.config), LoaderProtocol)


def test_processors_are_processors(plugins: Plugins) -> None:
    processors = plugins.registry("dlinfer_processors")
    for entry in processors.values():
        proc = entry.obj()
        _check(proc, ProcessorProtocol)
        if hasattr(proc, "request_inputs"):
            _check(proc, PreProcessorProtocol)
        if hasattr(proc, "response_outputs"):
            _check(proc, PostProcessorProtocol)


def test_balancers_are_balancers(plugins: Plugins) -> None:
    settings = pytest.importorskip("dlinfer_lb.settings")
    policy = settings.policy_for(settings.LbSettings(), "m")
    balancers = plugins.registry("dlinfer_balancers")
    assert {"swrr", "failover"} <= set(balancers)
    for entry in balancers.values():
        takes_policy = "policy" in inspect.signature(entry.obj).parameters
        _check(entry.obj(policy=policy) if takes_policy else entry.obj(), BalancerProtocol)


def test_runners_are_runners(tmp_path: Path, plugins: Plugins) -> None:
    from dlinfer.api.testing import onnx_linear_model
    from dlinfer.model import ModelConfig

    (tmp_path / "model.onnx").write_bytes(onnx_linear_model())
    loader = plugins.registry("dlinfer_model_formats")["onnx"].obj(plugins.config)
    runner = loader.load(ModelConfig(), tmp_path)
    try:
        _check(runner, RunnerProtocol)
        assert set(runner.predict({"x": np.ones((1, 4), np.float32)})) == {t.name for t in runner.outputs}
    finally:
        runner.close()


if TYPE_CHECKING:
    # The same contracts, checked statically: mypy rejects an assignment that does not conform.
    from dlinfer.api import Loader, ModelConfig, Runner
    from dlinfer.builtin.binary_codec import BinaryCodec
    from dlinfer.builtin.json_codec import JsonCodec
    from dlinfer_lb.settings import RoutePolicy
    from dlinfer_lb.strategies import ConsistentHash, LeastOutstanding, PeakEwma, SmoothWeightedRoundRobin
    from dlinfer_npz.balancer import FailoverBalancer
    from dlinfer_npz.loader import NpzLoader
    from dlinfer_onnx.loader import OnnxLoader
    from dlinfer_torch.processors import ArgMax, ImageDecode, TopK

    def _static(
        policy: RoutePolicy, loader: Loader, runner: Runner, npz: NpzLoader, onnx: OnnxLoader, config: ModelConfig
    ) -> None:
        codecs: list[CodecProtocol] = [JsonCodec, BinaryCodec]
        loaders: list[LoaderProtocol] = [loader, npz, onnx]
        runners: list[RunnerProtocol] = [runner, onnx.load(config, Path()), npz.load(config, Path())]
        pre: PreProcessorProtocol = ImageDecode()
        post: list[PostProcessorProtocol] = [TopK(), ArgMax()]
        balancers: list[BalancerProtocol] = [
            SmoothWeightedRoundRobin(policy),
            LeastOutstanding(policy),
            PeakEwma(policy),
            ConsistentHash(policy),
            FailoverBalancer(),
        ]
        del codecs, loaders, runners, pre, post, balancers
