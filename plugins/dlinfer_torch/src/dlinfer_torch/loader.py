"""The ``torch`` loader: TorchScript, ExportedProgram, state_dict + class, and (opt-in) pickled modules.

Model config keys read here (see docs/backends/torch.md):

- ``format``: ``torchscript``, ``torch_export``, ``pytorch_state_dict`` or ``pytorch_pickle``;
  detected when absent (``model.pt2`` -> torch_export; ``model.pt``/``model.pth`` -> torchscript
  if the archive carries TorchScript code, else pytorch_state_dict).
- ``device``: ``cpu`` (default), ``cuda`` or ``cuda:N``.
- ``threads``: torch intra-op threads (process-wide, see :meth:`TorchLoader.apply_threads`).
- ``allow_pickle``: load whole pickled modules (the node must allow it too).
- ``parameters.filename``, ``parameters.model_class``, ``parameters.init_kwargs``,
  ``parameters.state_dict_key``, ``parameters.strict``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from dlinfer import Loader, ModelConfig, ModelLoadError, Runner

from .modules import FORMATS, detect_folder, load_module, model_file, resolve_device

log = logging.getLogger("dlinfer.torch")

# torch's thread pools belong to the process, not to a model or a node, so what
# this plugin set them to is process state too.
_threads_lock = threading.Lock()
_intra_op: list[int] = []  # the size this plugin gave the pool, once it did


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
        self.apply_threads(config)
        loaded = load_module(fmt, f, config, device, self.allow_pickle(config), self.node_config.repository_path)
        return TorchRunner(loaded, config, device)

    def apply_threads(self, config: ModelConfig) -> None:
        """Size torch's intra-op pool: the largest ``threads`` any torch model of the process asked for.

        ``torch.set_num_threads`` is process-wide: the last call wins for every model.
        Letting each load overwrite it would make a model's speed depend on load order,
        so the pool only grows; a model asking for fewer threads than the pool has is
        logged. Inter-op threads can only be set before torch first runs anything in
        parallel, so the node's ``threads.inter_op`` applies when torch is still fresh.
        """
        import torch

        wanted = self.threads(config)
        with _threads_lock:
            current = _intra_op[0] if _intra_op else 0
            if wanted > current:
                torch.set_num_threads(wanted)
                _intra_op[:] = [wanted]
            elif wanted < current:
                log.info(
                    "model %s asks for %d threads; torch's intra-op pool is process-wide and keeps %d",
                    config.name,
                    wanted,
                    current,
                )
            inter = self.node_config.threads.inter_op
            if inter and torch.get_num_interop_threads() != inter:
                try:
                    torch.set_num_interop_threads(inter)
                except RuntimeError:
                    pass  # torch already started its inter-op pool; it cannot be resized
