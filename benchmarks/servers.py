"""Starting servers for the benchmarks: wait until a subprocess answers on HTTP."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path


def wait_http(url: str, proc: subprocess.Popen, log: Path | None = None, timeout_s: float = 180) -> None:
    """Return once ``url`` answers 200; raise if ``proc`` exits first (with its log's tail) or time runs out."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout_s} s")
