"""A small ONNX graph builder the layer rules emit into."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
from onnx import helper, numpy_helper


class Graph:
    """Nodes and initializers of the ONNX graph being built, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def reserve(self, name: str) -> str:
        self._names.add(name)
        return name

    def fresh(self, base: str) -> str:
        """A tensor name not used yet, derived from ``base``."""
        name, n = base, 0
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        return self.reserve(name)

    def const(self, value: npt.ArrayLike, base: str, dtype: Any = np.float32) -> str:
        """Add an initializer; returns its name."""
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values: list[int] | tuple[int, ...], base: str) -> str:
        return self.const(list(values), base, np.int64)

    def node(self, op: str, inputs: list[str], output: str | None = None, base: str = "", **attrs: Any) -> str:
        """Add one single-output node; returns the output's name (``output`` if given)."""
        out = output if output is not None else self.fresh(base or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(f"{out}/{op}"), **attrs))
        return out

    def multi(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> list[str]:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.fresh(f"{outputs[0]}/{op}"), **attrs))
        return outputs


@attrs.frozen
class LayerIO:
    """What a layer rule gets: the layer, its inputs as ONNX tensors with their
    Caffe shapes, the names its outputs must have, and its trained blobs."""

    layer: Any
    bottoms: list[str]
    shapes: list[tuple[int, ...]]
    tops: list[str]
    blobs: list[np.ndarray]

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def x(self) -> str:
        return self.bottoms[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.shapes[0]
