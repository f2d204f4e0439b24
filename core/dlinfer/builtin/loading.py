"""Built-in plugin: dispatch model loading to the registered loaders, and run inference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelLoadError
from ..plugins import hookimpl

if TYPE_CHECKING:
    from ..config import NodeConfig
    from ..model import Loader, ModelConfig, Runner
    from ..plugins import Plugins
    from ..repository import ServedModel


class LoaderDispatch:
    """Picks the loader for a model: by its ``format``, else by ``detect``."""

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        self._loaders: dict[str, Loader] | None = None

    def loaders(self) -> dict[str, Loader]:
        if self._loaders is None:
            registry = self.plugins.registry("dlinfer_model_formats")
            self._loaders = {name: e.obj(self.plugins.config) for name, e in registry.items()}
        return self._loaders

    def formats(self) -> dict[str, Loader]:
        return {fmt: loader for loader in self.loaders().values() for fmt in loader.formats}

    def pick(self, config: ModelConfig, path: Path) -> tuple[str, Loader]:
        formats = self.formats()
        installed = ", ".join(sorted(formats)) or "none"
        if config.format:
            loader = formats.get(config.format)
            if loader is None:
                raise ModelLoadError(
                    f"no installed loader handles format {config.format!r} "
                    f"(installed formats: {installed}); install its plugin, e.g. "
                    f"pip install 'dlinfer[{_extra_for(config.format)}]'"
                )
            return config.format, loader
        for loader in self.loaders().values():
            fmt = loader.detect(path)
            if fmt:
                return fmt, loader
        files = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "no files"
        raise ModelLoadError(
            f"no installed loader claims the files in version folder {path.name!r} ({files}); "
            f"installed formats: {installed}. Set 'format' in config.toml or install the "
            "plugin for this format, e.g. pip install 'dlinfer[onnx]'"
        )

    @hookimpl(trylast=True)
    def dlinfer_load_model(self, config: ModelConfig, path: Path, node_config: NodeConfig) -> Runner:
        _fmt, loader = self.pick(config, path)
        return loader.load(config, path)

    @hookimpl(trylast=True)
    def dlinfer_infer(self, model: ServedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return model.runner.predict(inputs)


_EXTRAS = {
    "savedmodel": "tf",
    "keras": "tf",
    "torchscript": "torch",
    "pytorch_state_dict": "torch",
    "torch_export": "torch",
    "pytorch_pickle": "torch",
    "caffe": "caffe",
    "onnx": "onnx",
    "tensorrt_plan": "trt",
}


def _extra_for(fmt: str) -> str:
    return _EXTRAS.get(fmt, "all")


def make_plugin(plugins: Plugins) -> LoaderDispatch:
    return LoaderDispatch(plugins)
