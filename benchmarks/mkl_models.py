"""Benchmark models for ``benchmarks/mkl.py``, defined in torch with random weights.

Importable by the server (``parameters.model_class = "mkl_models:ResNet50"``) when this
folder is on ``PYTHONPATH``, so the server runs exactly these eager modules.

- :class:`ResNet50`: the standard 3-4-6-3 bottleneck ResNet-50 (25.6 M parameters).
- :class:`MobileNetV2`: width 1.0, the paper's inverted-residual table.
- :class:`WideDeep`: a Wide&Deep-style click model: 13 dense features and 26 categorical
  ids (embedding tables of 1,000 rows x 16) into a 3-layer MLP plus a linear "wide" part.
"""

from __future__ import annotations

import torch
from torch import nn


def _bn_act(inp: int, out: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(inp, out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    def __init__(self, inp: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * 4
        self.body = nn.Sequential(
            _bn_act(inp, width, 1), _bn_act(width, width, 3, stride), _bn_act(width, out, 1, act=None)
        )
        self.skip = _bn_act(inp, out, 1, stride, act=None) if stride != 1 or inp != out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_bn_act(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        inp = 64
        for width, repeats, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(repeats):
                blocks.append(_Bottleneck(inp, width, stride if i == 0 else 1))
                inp = width * 4
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(inp, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(image))


class _InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers = [_bn_act(inp, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [_bn_act(hidden, hidden, 3, stride, hidden, nn.ReLU6), _bn_act(hidden, out, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_bn_act(3, 32, 3, 2, act=nn.ReLU6)]
        inp = 32
        for expand, out, repeats, stride in (
            (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
        ):  # fmt: skip
            for i in range(repeats):
                layers.append(_InvertedResidual(inp, out, stride if i == 0 else 1, expand))
                inp = out
        layers += [_bn_act(inp, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(image))


class WideDeep(nn.Module):
    DENSE, SPARSE, VOCAB, DIM = 13, 26, 1000, 16

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(self.VOCAB, self.DIM) for _ in range(self.SPARSE))
        deep_in = self.DENSE + self.SPARSE * self.DIM
        self.deep = nn.Sequential(
            nn.Linear(deep_in, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU()
        )
        self.head = nn.Linear(128 + deep_in, 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embedded = [emb(sparse[:, i]) for i, emb in enumerate(self.embeddings)]
        features = torch.cat([dense, *embedded], dim=1)
        return torch.sigmoid(self.head(torch.cat([self.deep(features), features], dim=1)))


def randomized(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    """An eval-mode instance with seeded random weights and BatchNorm statistics.

    Convolutions get He (fan-out) initialisation, as torchvision's models do: with
    torch's default init, activations shrink layer by layer into subnormal floats,
    which slow every CPU backend down and say nothing about real models.
    """
    torch.manual_seed(seed)
    model = cls()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()
