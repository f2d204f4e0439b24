"""Comparing two models' outputs: the gate for converters and optimizers.

Every conversion (torch/tf/caffe -> ONNX) and every optimizer step reports the
same numbers, computed here once.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np


@attrs.frozen
class Comparison:
    """Largest absolute and relative differences over all outputs."""

    max_abs_error: float
    max_rel_error: float
    worst_output: str
    ok: bool

    def describe(self) -> str:
        verdict = "within tolerance" if self.ok else "OUT OF TOLERANCE"
        return (
            f"max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g} "
            f"(worst output {self.worst_output!r}): {verdict}"
        )


def compare_outputs(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> Comparison:
    """Compare outputs by name (or by position when the names differ).

    ``ok`` follows ``numpy.allclose`` semantics (``|a - e| <= atol + rtol * |e|``);
    the relative error is reported against ``max(|e|, atol)`` so that
    near-zero expected values do not produce meaningless huge ratios.
    """
    if set(expected) == set(actual):
        pairs = [(k, expected[k], actual[k]) for k in expected]
    elif len(expected) == len(actual):
        pairs = [(k, e, a) for (k, e), a in zip(expected.items(), actual.values(), strict=True)]
    else:
        raise ValueError(f"outputs differ: expected {sorted(expected)}, got {sorted(actual)}")
    max_abs = max_rel = 0.0
    worst = ""
    ok = True
    for name, e, a in pairs:
        e = np.asarray(e)
        a = np.asarray(a)
        if e.shape != a.shape:
            raise ValueError(f"output {name!r}: shape {a.shape} differs from the expected {e.shape}")
        if e.dtype.kind in "OSU":
            same = bool(np.array_equal(e, a))
            ok &= same
            if not same:
                worst = name
            continue
        e64 = e.astype(np.float64)
        diff = np.abs(a.astype(np.float64) - e64)
        abs_err = float(diff.max()) if diff.size else 0.0
        rel_err = float((diff / np.maximum(np.abs(e64), atol)).max()) if diff.size else 0.0
        ok &= bool(np.all(diff <= atol + rtol * np.abs(e64)))
        if abs_err >= max_abs:
            worst = name
        max_abs = max(max_abs, abs_err)
        max_rel = max(max_rel, rel_err)
    return Comparison(max_abs, max_rel, worst, ok)
