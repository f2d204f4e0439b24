"""Overload benchmark: goodput and admitted latency under open-loop load, per admission policy.

Usage::

    python benchmarks/overload.py [--models mnv2] [--loads 0.84,2] [--duration 8] [--timeout 10]
        [--protocol binary] [--policies queue256,queue16,wait]

Builds the models (``bench_models.py``), starts one ``dlinfer-core`` serving each
model under every admission policy, measures each model's capacity (closed loop,
eight clients, binary tensors), then offers open-loop load at each multiple of that
capacity (``loadgen.py`` in its own process: requests leave on schedule over as
many connections as they need, whatever the server answers).

Policies:

- ``queue256``: the queue bounded by count only (``max_queue_size = 256``, no wait
  bound): what a node did before ``max_queue_wait_ms``;
- ``queue16``: the same with ``max_queue_size = 16``;
- ``wait``: the defaults: ``max_queue_size = 256`` and ``limits.max_queue_wait_ms``
  (refuse a request whose expected wait is over the bound).

Goodput is 200 answers per second as a share of capacity; latency is that of the
admitted (200) requests from the moment each was scheduled to leave, so a stalled
server is not hidden behind a stalled client. ``lost`` counts requests that got no
answer before the client's ``--timeout`` (or a reset).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_models import SHAPES, write  # noqa: E402
from serving import Node, loadgen, table  # noqa: E402

#: Model config per policy (none batches: every request is its own call, the harder case).
POLICIES: dict[str, dict[str, Any]] = {
    "queue256": {"instance_count": 1, "max_queue_size": 256, "max_queue_wait_ms": 0},
    "queue16": {"instance_count": 1, "max_queue_size": 16, "max_queue_wait_ms": 0},
    "wait": {"instance_count": 1},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mnv2")
    p.add_argument("--loads", default="0.84,2", help="offered load as multiples of the measured capacity")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--protocol", default="binary", choices=("json", "binary"))
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=10.0, help="the clients' own timeout, seconds")
    args = p.parse_args()
    models = args.models.split(",")
    loads = [float(x) for x in args.loads.split(",")]
    policies = args.policies.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        repo = folder / "models"
        for m in models:
            src = write(m, folder / "src" / m / "model.onnx")
            for pol in policies:
                (repo / f"{m}_{pol}" / "1").mkdir(parents=True)
                shutil.copy(src, repo / f"{m}_{pol}" / "1" / "model.onnx")
                (repo / f"{m}_{pol}" / "config.toml").write_text(tomli_w.dumps(POLICIES[pol]))
        node = Node(repo, folder)
        try:
            for m in models:
                shape = ",".join(map(str, (1, *SHAPES[m])))
                cap = loadgen(node, f"{m}_wait", shape, "binary", args, concurrency=8)["rps"]
                for load, pol in tqdm([(x, pol) for x in loads for pol in policies], desc=m):
                    time.sleep(1)  # let the last run's stragglers finish
                    r = loadgen(node, f"{m}_{pol}", shape, args.protocol, args, rate=load * cap, timeout=args.timeout)
                    out = r["outcomes"]
                    lost = sum(n for k, n in out.items() if k.startswith("error:"))
                    rows.append(
                        [
                            m,
                            pol,
                            f"{load:g}x",
                            cap,
                            r["rps"],
                            f"{100 * r['rps'] / cap:.0f}%",
                            out.get("429", 0) / args.duration,
                            out.get("503", 0) / args.duration,
                            lost,
                            r["p50_ms"],
                            r["p99_ms"],
                        ]
                    )
        finally:
            node.stop()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"command: python benchmarks/overload.py {' '.join(sys.argv[1:])}\n")
    header = ["model", "policy", "load", "capacity/s", "200/s", "goodput", "429/s", "503/s", "lost", "p50 ms", "p99 ms"]
    print(table(header, rows))


if __name__ == "__main__":
    main()
