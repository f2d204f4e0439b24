"""How ``dlinfer-core optimize`` picks the variant it records."""

from __future__ import annotations

import pytest

from dlinfer.model import model_config_from_dict
from dlinfer.optimize import Variant, best_variant, default_batch_sizes

BASELINE = Variant((), True, latency_ms=70.0, throughput=12.0)
# Faster at batch 8 by a little, at batch 1 by less (ONNX Runtime on ResNet-50, say).
BATCHY = Variant(("onnxruntime",), True, latency_ms=37.0, throughput=52.0)
# Much faster at batch 1, a little slower at batch 8 (OpenVINO's latency mode).
SNAPPY = Variant(("openvino",), True, latency_ms=21.0, throughput=38.0)
REJECTED = Variant(("bf16",), False, "out of tolerance")
VARIANTS = [BASELINE, BATCHY, SNAPPY, REJECTED]


@pytest.mark.parametrize(("prefer", "expected"), [("balanced", SNAPPY), ("latency", SNAPPY), ("throughput", BATCHY)])
def test_preference_picks_the_variant(prefer: str, expected: Variant) -> None:
    assert best_variant(VARIANTS, prefer) is expected


def test_balanced_weighs_both_speedups_equally() -> None:
    # 2x throughput at 1.5x the latency beats the baseline (2 / 1.5 > 1); 2x at 2.5x does not.
    better = Variant(("a",), True, latency_ms=105.0, throughput=24.0)
    worse = Variant(("b",), True, latency_ms=175.0, throughput=24.0)
    assert best_variant([BASELINE, better]) is better
    assert best_variant([BASELINE, worse]) is BASELINE


def test_rejected_variants_are_never_picked() -> None:
    fast_but_wrong = Variant(("int8",), False, "out of tolerance", latency_ms=1.0, throughput=1000.0)
    assert best_variant([BASELINE, fast_but_wrong]) is BASELINE


def test_unknown_preference_is_refused() -> None:
    with pytest.raises(ValueError, match="prefer must be one of balanced, latency, throughput"):
        best_variant(VARIANTS, "cheapest")


@pytest.mark.parametrize(
    ("config", "sizes"),
    [
        ({}, [1, 8]),
        ({"max_batch_size": 4}, [1, 4]),
        ({"max_batch_size": 1}, [1]),
        ({"dynamic_batching": {"preferred_batch_size": [4, 16]}}, [1, 16]),
        ({"dynamic_batching": {"preferred_batch_size": [4, 16]}, "max_batch_size": 12}, [1, 12]),
    ],
)
def test_autotune_times_the_batch_sizes_the_model_will_see(config: dict, sizes: list[int]) -> None:
    assert default_batch_sizes(model_config_from_dict(config, "m/config.toml")) == sizes
