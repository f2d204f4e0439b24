"""PyTorch optimizers: TorchScript freezing for inference, and bf16 autocast.

They work on the runners of the ``torch`` plugin (dlinfer-torch), whose ``module``
attribute is the callable the runner calls; the optimized runner is a copy holding
the new module, so closing the original does not touch it.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np

from dlinfer.api import OptimizeContext, Optimizer, Runner


def is_torch_runner(runner: Runner) -> bool:
    return getattr(runner, "platform", "").startswith("pytorch") and getattr(runner, "module", None) is not None


def _on_cpu(runner: Runner) -> bool:
    device = getattr(runner, "device", None)
    return device is None or getattr(device, "type", "cpu") == "cpu"


def _wrappers() -> tuple[type, type]:
    """nn.Module classes defined on first use (torch is imported only when a torch model is optimized)."""
    global _CHANNELS_LAST, _AUTOCAST
    if _CHANNELS_LAST is None:
        import torch

        class ChannelsLast(torch.nn.Module):
            """Feeds 4-D inputs in NHWC memory order, which oneDNN's convolutions prefer."""

            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: Any) -> Any:
                return self.inner(
                    *(a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args)
                )

        class Autocast(torch.nn.Module):
            """Runs the inner module under CPU bf16 autocast; float outputs come back as float32."""

            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: Any) -> Any:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = self.inner(*args)
                return torch.utils._pytree.tree_map(
                    lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 else t, out
                )

        _CHANNELS_LAST, _AUTOCAST = ChannelsLast, Autocast
    return _CHANNELS_LAST, _AUTOCAST


_CHANNELS_LAST: Any = None
_AUTOCAST: Any = None


def _copy_with(runner: Runner, module: Any) -> Runner:
    new = copy.copy(runner)
    new.module = module  # type: ignore[attr-defined]
    return new


class TorchScriptFreeze(Optimizer):
    """Trace (unless already TorchScript) → ``torch.jit.freeze`` → ``torch.jit.optimize_for_inference``.

    Freezing inlines weights as constants and folds conv+batchnorm; optimize_for_inference
    then pre-packs convolutions and linear layers for oneDNN. Options: ``channels_last``
    (true, false or "auto": on when the model has a 4-D input).
    """

    name = "torchscript-freeze"

    def applies_to(self, runner: Runner, ctx: OptimizeContext) -> bool:
        return is_torch_runner(runner) and _on_cpu(runner)

    def optimize(self, runner: Runner, ctx: OptimizeContext) -> Runner:
        import torch

        module = runner.module  # type: ignore[attr-defined]
        example = tuple(torch.from_numpy(np.ascontiguousarray(ctx.samples[0][t.name])) for t in runner.inputs)
        wanted = ctx.options.get("channels_last", "auto")
        if wanted not in (True, False, "auto"):
            raise ValueError(f"channels_last must be true, false or 'auto', got {wanted!r}")
        channels_last = any(e.dim() == 4 for e in example) if wanted == "auto" else wanted
        if channels_last:
            module = _wrappers()[0](module).eval()
        with torch.no_grad(), warnings.catch_warnings():
            # torch 2.13 marks torch.jit deprecated in favour of torch.compile; freezing still
            # works and, unlike torch.compile, needs no compiler toolchain on the server.
            warnings.simplefilter("ignore", DeprecationWarning)
            if isinstance(module, torch.jit.ScriptModule):
                scripted = module
            else:
                scripted = torch.jit.trace(module, example, check_trace=False, strict=False)
            frozen = torch.jit.freeze(scripted.eval())
            frozen = torch.jit.optimize_for_inference(frozen)
        return _copy_with(runner, frozen)


def autocast_applies(runner: Runner) -> bool:
    """Autocast needs a Python module: TorchScript graphs ignore it."""
    if not (is_torch_runner(runner) and _on_cpu(runner)):
        return False
    import torch

    return not isinstance(runner.module, torch.jit.ScriptModule)  # type: ignore[attr-defined]


def autocast_runner(runner: Runner) -> Runner:
    return _copy_with(runner, _wrappers()[1](runner.module).eval())  # type: ignore[attr-defined]
