"""Generate the example model repository (no model binaries are committed).

Usage: python examples/make_models.py [OUTPUT_DIR]   (default: examples/models)
"""

from __future__ import annotations

import sys
from pathlib import Path

from dlinfer.testing import onnx_linear_model, write_model


def main(out: Path) -> None:
    write_model(
        out,
        "classifier",
        1,
        {"model.onnx": onnx_linear_model(in_features=4, out_features=3, seed=0)},
        config={"max_batch_size": 16},
    )
    print(f"example models written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "models")
