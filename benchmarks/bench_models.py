"""Benchmark models with random weights, built with torch and exported to ONNX at bench time.

- ``cnn``: a small CNN (3 conv layers + linear) on 3x64x64 images, 10 classes.
- ``mnv2``: MobileNetV2-shaped (width 1.0, inverted residuals, 1000 classes) on 3x224x224.

Both take input ``x`` [batch, 3, H, W] FP32 and return ``y`` [batch, classes], with a
dynamic batch dimension. Nothing is downloaded and nothing large is committed.
"""

from __future__ import annotations

import io
from pathlib import Path

SHAPES = {"cnn": (3, 64, 64), "mnv2": (3, 224, 224)}


def _cnn():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def _mobilenet_v2():
    import torch
    from torch import nn

    def conv_bn(inp: int, out: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
        layers: list[nn.Module] = [
            nn.Conv2d(inp, out, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
        ]
        if act:
            layers.append(nn.ReLU6())
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = inp * expand
            layers = [conv_bn(inp, hidden, 1, 1)] if expand != 1 else []
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, out, 1, 1, act=False)]
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and inp == out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.block(x) if self.residual else self.block(x)

    # (expansion, channels, repeats, first stride): the MobileNetV2 paper's table 2.
    settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
    inp = 32
    for t, c, n, s in settings:
        for i in range(n):
            layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
            inp = c
    layers += [conv_bn(inp, 1280, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


def torch_module(name: str):
    """Benchmark model ``name`` as a torch module in eval mode, random weights (fixed seed)."""
    import torch

    torch.manual_seed(0)
    return {"cnn": _cnn, "mnv2": _mobilenet_v2}[name]().eval()


def onnx_bytes(name: str) -> bytes:
    """The ONNX file of benchmark model ``name``."""
    import torch

    model = torch_module(name)
    f = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(1, *SHAPES[name]),),
            f,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return f.getvalue()


def write(name: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_bytes(name))
    return path
