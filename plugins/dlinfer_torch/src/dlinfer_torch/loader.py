"""The ``torch`` loader: TorchScript, ExportedProgram, state_dict + class, and (opt-in) pickled modules.

Model config keys read here (see docs/backends/torch.md):

- ``format``: ``torchscript``, ``torch_export``, ``pytorch_state_dict`` or ``pytorch_pickle``;
  detected when absent (``model.pt2`` -> torch_export; ``model.pt``/``model.pth`` -> torchscript
  if the archive carries TorchScript code, else pytorch_state_dict).
- ``device``: ``cpu`` (default), ``cuda`` or ``cuda:N``.
- ``threads``: torch intra-op threads of this model (see :mod:`dlinfer_torch.threads`).
- ``allow_pickle``: load whole pickled modules (the node must allow it too).
- ``parameters.filename``, ``parameters.model_class``, ``parameters.init_kwargs``,
  ``parameters.state_dict_key``, ``parameters.strict``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dlinfer.api import Loader, ModelConfig, ModelLoadError, Runner

from .modules import FORMATS, detect_folder, load_module, model_file, resolve_device
from .threads import configure

log = logging.getLogger("dlinfer.torch")


class TorchLoader(Loader):
    """PyTorch models in any of :data:`FORMATS`."""

    name = "torch"
    formats = FORMATS

    @classmethod
    def detect(cls, path: Path) -> str | None:
        return detect_folder(path)

    def allow_pickle(self, config: ModelConfig) -> bool:
        """Unpickling needs both opt-ins (core checks this too; a loader must not trust callers)."""
        return config.allow_pickle and self.node_config.repository.allow_pickle

    def load(self, config: ModelConfig, path: Path) -> Runner:
        from .runner import TorchRunner

        fmt = config.format or detect_folder(path)
        if fmt is None:
            raise ModelLoadError(f"version folder {path.name!r} has no model.pt2, model.pt or model.pth")
        f = model_file(path, config, fmt)
        device = resolve_device(config.device)
        threads = self.threads(config)
        configure(threads, self.node_config.threads.inter_op, config.name)
        loaded = load_module(fmt, f, config, device, self.allow_pickle(config), self.node_config.repository_path)
        return TorchRunner(loaded, config, device, threads)
