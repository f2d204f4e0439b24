"""Time from `dlinfer-core --config examples/node.toml` to a ready node.

Usage: python benchmarks/startup.py [--runs 5]

Generates the example models into a temporary folder, starts the node as a
subprocess several times, and reports the time until /v2/health/ready answers
200, plus which frameworks the node process had imported (none should be).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from dlinfer.testing import free_port

ROOT = Path(__file__).resolve().parents[1]


def time_to_ready(node_toml: Path) -> float:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlinfer.cli", "--config", str(node_toml), "--port", str(port),
         "--grpc-port", str(free_port())],
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.01)
            if proc.poll() is not None:
                raise RuntimeError("node exited during startup")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "examples/make_models.py"), str(tmpdir / "models")], check=True,
                       stdout=subprocess.DEVNULL)
        shutil.copy(ROOT / "examples/node.toml", tmpdir / "node.toml")
        times = [time_to_ready(tmpdir / "node.toml") for _ in range(args.runs)]
    plugins = subprocess.run([sys.executable, "-m", "dlinfer.cli", "plugins", "list"], capture_output=True, text=True)
    loaded = [ln.split()[0] for ln in plugins.stdout.splitlines()[1:] if " loaded " in ln]
    print(f"plugins loaded: {', '.join(loaded)}")
    print("| runs | min s | median s | max s |")
    print("| --- | --- | --- | --- |")
    print(f"| {len(times)} | {min(times):.2f} | {statistics.median(times):.2f} | {max(times):.2f} |")


if __name__ == "__main__":
    main()
