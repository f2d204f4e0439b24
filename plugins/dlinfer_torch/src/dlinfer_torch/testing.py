"""Tiny real torch models for tests and examples, and writers for every served format.

``parameters.model_class`` can name these classes (``dlinfer_torch.testing:TinyCNN``),
since this module is importable wherever the plugin is installed. Importing it imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


class TinyCNN(nn.Module):
    """A few-layer image classifier: [N, channels, H, W] float32 -> [N, classes] logits."""

    def __init__(self, classes: int = 5, channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(width * 2, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))


class TwoInTwoOut(nn.Module):
    """Two inputs (an image and a feature vector), two outputs returned as a tuple."""

    def __init__(self, features: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Linear(4 + features, classes)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.relu(self.conv(image)).mean(dim=(2, 3))
        logits = self.mix(torch.cat([pooled, extra], dim=1))
        return logits, pooled * 2.0


class DictOut(nn.Module):
    """One input, a dict of two named outputs."""

    def __init__(self, features: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc(x)
        return {"logits": logits, "probs": torch.softmax(logits, dim=1)}


class ThreadCount(nn.Module):
    """Answers, per batch row, how many intra-op threads torch uses on the calling thread."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), float(torch.get_num_threads()))


def make(cls: type[nn.Module], seed: int = 0, **kwargs: Any) -> nn.Module:
    """An instance with seeded random weights, in eval mode (BatchNorm statistics randomised too)."""
    torch.manual_seed(seed)
    module = cls(**kwargs)
    for m in module.modules():
        # None without running statistics (track_running_stats=False): nothing to randomise.
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def save_torchscript(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


def save_exported(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, dynamic_batch: bool = True) -> Path:
    """``torch.export`` with the first dimension of every input dynamic (one shared batch dim)."""
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        dynamic = tuple({0: batch} for _ in example)
    program = torch.export.export(module, example, dynamic_shapes=dynamic)
    torch.export.save(program, str(path))
    return path


def save_state_dict(module: nn.Module, path: Path) -> Path:
    torch.save(module.state_dict(), str(path))
    return path


def save_pickled(module: nn.Module, path: Path) -> Path:
    torch.save(module, str(path))
    return path
