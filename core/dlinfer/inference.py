"""Inference requests and responses, independent of the wire format.

Codecs turn bytes into an :class:`InferenceRequest` and an
:class:`InferenceResponse` into bytes; everything between works on numpy.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np


@attrs.define
class Tensor:
    """A named tensor on the wire: V2 datatype, shape, numpy data, per-tensor parameters."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class InferenceRequest:
    inputs: list[InferInput]
    id: str | None = None
    outputs: list[RequestedOutput] = attrs.field(factory=list)
    parameters: dict[str, Any] = attrs.field(factory=dict)
    #: Set by codecs when an input or requested output names a shared memory region
    #: (``dlinfer.shared_memory``): the data plane then reads and writes the regions.
    shared_memory: bool = False

    def input_arrays(self) -> dict[str, np.ndarray]:
        return {i.name: i.data for i in self.inputs}


class InferInput(Tensor):
    """A request's input tensor."""


class InferOutput(Tensor):
    """A response's output tensor."""


@attrs.define
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: list[InferOutput]
    id: str | None = None
    parameters: dict[str, Any] = attrs.field(factory=dict)
