"""Shared steps of the packaging tests: wheels, an offline wheelhouse, fresh venvs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str | Path, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


def build_wheelhouse(wheels: Path, *projects: Path, requirements: tuple[str, ...] = ()) -> Path:
    """Wheels of ``projects`` plus, as wheels, every dependency of ``requirements``."""
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, *projects)
    if requirements:
        run(sys.executable, "-m", "pip", "wheel", "--quiet", "-w", wheels, "--find-links", wheels, *requirements)
    return wheels


def clean_env() -> dict[str, str]:
    """The environment without this venv's or dlinfer's variables."""
    dropped = ("PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("DLINFER")}


def fresh_venv(path: Path) -> tuple[Path, Path]:
    """A new venv; returns its python and its dlinfer-core script."""
    run(sys.executable, "-m", "venv", path)
    return path / "bin" / "python", path / "bin" / "dlinfer-core"


def offline_install(python: Path, wheels: Path, *requirements: str) -> None:
    run(python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels, *requirements, env=clean_env())
