"""``dlinfer-core optimize``: tries the variants, prints the table, records the winner in config.toml."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from dlinfer.api.testing import write_model


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", *args], capture_output=True, text=True, timeout=240, check=False
    )


HAND_WRITTEN = """\
# tuned on the build box
max_batch_size = 8  # clients send up to 8
instance_count = 1

[dynamic_batching]
# keep latency low
max_queue_delay_us = 500
"""


def test_optimize_records_a_validated_variant(tmp_path: Path, conv_onnx: bytes) -> None:
    repo = tmp_path / "models"
    write_model(repo, "conv", 1, {"model.onnx": conv_onnx}, {})
    (repo / "conv" / "config.toml").write_text(HAND_WRITTEN)
    done = run("optimize", "conv", "--model-repository", str(repo), "--min-seconds", "0.05")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["variant", "valid", "latency"]
    variants = {
        line.split()[0]: line.split()[1]
        for line in lines[1:]
        if line and not line.startswith(("fastest", "rec", "ranked"))
    }
    # Full precision only: the reduced-precision optimizers are tried only when asked.
    assert variants == {"baseline": "yes", "onnxruntime": "yes", "openvino": "yes"}
    assert "optimizing conv" in done.stderr  # the progress bar
    chosen = tomllib.loads((repo / "conv" / "config.toml").read_text())
    assert chosen["max_batch_size"] == 8 and chosen["instance_count"] == 1
    assert chosen["dynamic_batching"] == {"max_queue_delay_us": 500}
    text = (repo / "conv" / "config.toml").read_text()
    assert "# tuned on the build box" in text and "max_batch_size = 8  # clients send up to 8" in text
    winner = next(line for line in lines if line.startswith("fastest validated variant:")).split(": ")[1]
    assert "ranked by: balanced (--prefer)" in lines
    assert chosen["optimize"] == ([] if winner == "baseline" else winner.split("+"))


def test_optimize_reports_rejected_variants_and_can_leave_config_alone(tmp_path: Path, conv_onnx: bytes) -> None:
    repo = tmp_path / "models"
    write_model(
        repo,
        "conv",
        1,
        {"model.onnx": conv_onnx},
        # An int8 gate no int8 model can meet: the variant must show as rejected, with the reason.
        {"optimize_options": {"int8": {"atol": 1e-9, "rtol": 1e-9}}, "max_batch_size": 4},
    )
    before = (repo / "conv" / "config.toml").read_text()
    done = run(
        "optimize", "conv", "--model-repository", str(repo), "--candidate", "int8", "--min-seconds", "0.05", "--dry-run"
    )
    assert done.returncode == 0, done.stderr
    assert "rows/s b4" in done.stdout.splitlines()[0]  # the model's batch limit, not the default 8
    int8 = next(line for line in done.stdout.splitlines() if line.startswith("int8"))
    assert "REJECTED" in int8 and "out of tolerance" in int8
    assert "fastest validated variant: baseline" in done.stdout
    assert (repo / "conv" / "config.toml").read_text() == before


def test_optimize_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    done = run("optimize", "nope", "--model-repository", str(tmp_path / "models"))
    assert done.returncode == 1 and "nope" in done.stderr and "Traceback" not in done.stderr
