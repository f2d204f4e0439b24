"""Starting servers for the benchmarks: wait until a subprocess answers on HTTP, or has loaded its models."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any


def wait_http(url: str, proc: subprocess.Popen, log: Path | None = None, timeout_s: float = 180) -> None:
    """Return once ``url`` answers 200; raise if ``proc`` exits first (with its log's tail) or time runs out."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout_s} s")


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""


def wait_models(
    client: Any, models: list[str], proc: subprocess.Popen, log: Path | None = None, timeout_s: float = 1200
) -> dict[str, str]:
    """Wait until each of ``models`` is READY or failed to load (a tritonclient HTTP ``client``
    reads the repository index); return the failed ones with their reasons. Raise if ``proc``
    exits first or time runs out."""
    until = time.monotonic() + timeout_s
    while True:
        try:
            rows = {r["name"]: r for r in client.get_model_repository_index()}
        except Exception:  # not listening yet
            rows = {}
        states = {m: rows.get(m, {}).get("state", "") for m in models}
        if all(state in ("READY", "UNAVAILABLE") for state in states.values()):
            return {m: rows[m].get("reason", "") for m, state in states.items() if state == "UNAVAILABLE"}
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > until:
            raise RuntimeError(f"models not loaded in {timeout_s} s: {states}\n{_tail(log)}")
        time.sleep(0.5)
