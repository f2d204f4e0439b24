"""Model conversion (``dlinfer-core convert``): the Converter interface and driver.

Converters come from the ``dlinfer_converters`` hook. The driver picks one by
source and target format, runs it, and by default validates the result by
running the source and the converted model on the same inputs.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from .errors import ConfigError
from .model import ModelConfig

if TYPE_CHECKING:
    from .plugins import Plugins


@attrs.frozen
class ConvertOptions:
    """What the user asked of a conversion."""

    #: ONNX opset; None: the converter's default.
    opset: int | None = None
    #: Model config of the source (inputs, shapes, parameters), e.g. its config.toml.
    model_config: ModelConfig = attrs.field(factory=ModelConfig)
    #: Mark the first dimension of inputs/outputs dynamic (batch axis).
    dynamic_batch: bool = True
    #: Run source and result on the same inputs and compare.
    validate: bool = True
    #: Absolute and relative tolerance of the validation.
    atol: float = 1e-4
    rtol: float = 1e-3
    #: Converter-specific ``--option key=value`` pairs.
    extra: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ConvertResult:
    """Where the converted model went and how close it came to the source."""

    output: Path
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    notes: tuple[str, ...] = ()


class Converter(abc.ABC):
    """Turns a model of one format into another (usually ONNX)."""

    name: ClassVar[str]
    source_formats: ClassVar[tuple[str, ...]]
    target_format: ClassVar[str]

    @abc.abstractmethod
    def convert(self, src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
        """Convert ``src`` (a file or version folder) into ``dst``; validate when asked."""


def find_converter(plugins: Plugins, source: str, target: str) -> Converter:
    """The registered converter from ``source`` to ``target`` format."""
    registry = plugins.registry("dlinfer_converters")
    for entry in registry.values():
        cls = entry.obj
        if source in cls.source_formats and cls.target_format == target:
            return cls()
    known = (
        ", ".join(f"{'/'.join(e.obj.source_formats)}->{e.obj.target_format}" for e in registry.values())
        or "none installed"
    )
    raise ConfigError(f"no converter from {source!r} to {target!r} (available: {known})")


def detect_format(plugins: Plugins, src: Path) -> str:
    """The format of ``src`` (a version folder, or a file inside one) by the loaders' ``detect``."""
    folder = src if src.is_dir() else src.parent
    for entry in plugins.registry("dlinfer_model_formats").values():
        fmt = entry.obj.detect(folder)
        if fmt:
            return fmt
    raise ConfigError(f"{src}: no installed loader recognises this model; pass --from FORMAT")
