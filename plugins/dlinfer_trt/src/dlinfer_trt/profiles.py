"""Optimisation profiles: min/opt/max shapes for every dynamic input dimension."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from dlinfer.api import ModelConfig, ModelLoadError, TensorSpec


@attrs.frozen
class Profile:
    """One TensorRT optimisation profile: per input name, (min, opt, max) shapes."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def key(self) -> str:
        return ";".join(f"{n}:{'x'.join(map(str, mx))}" for n, (_, _, mx) in sorted(self.shapes.items()))


def batch_profile(inputs: Sequence[TensorSpec], config: ModelConfig, max_batch_size: int) -> Profile:
    """The profile for a model with a dynamic batch axis.

    min = 1, max = the model's ``max_batch_size``, opt = the largest preferred batch
    size of ``[dynamic_batching]`` (what the scheduler will mostly send), else max.
    Other dynamic dimensions must be fixed by ``[[input]] shape`` in config.toml.
    """
    stated = {t.name: t.shape for t in config.input}
    preferred = [
        p
        for p in (config.dynamic_batching.preferred_batch_size if config.dynamic_batching else ())
        if 1 <= p <= max_batch_size
    ]
    opt_batch = max(preferred) if preferred else max_batch_size
    shapes = {}
    for spec in inputs:
        dims = list(spec.shape)
        batched = max_batch_size > 0 and dims and dims[0] == -1
        rest = dims[1:] if batched else dims
        if spec.name in stated and len(stated[spec.name]) == len(rest):
            rest = [s if d == -1 else d for d, s in zip(rest, stated[spec.name], strict=True)]
        if any(d == -1 for d in rest):
            raise ModelLoadError(
                f"input {spec.name!r} has dynamic dimensions besides the batch axis {list(spec.shape)}; "
                "give its shape in config.toml ([[input]] shape) so a TensorRT profile can be built"
            )
        if batched:
            shapes[spec.name] = ((1, *rest), (opt_batch, *rest), (max_batch_size, *rest))
        else:
            fixed = tuple(rest)
            shapes[spec.name] = (fixed, fixed, fixed)
    return Profile(shapes)
