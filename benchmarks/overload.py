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
  (refuse a request whose expected wait is over the bound);
- ``wait_expect``: the defaults, the clients sending ``Expect: 100-continue`` (a refused
  request's body is never sent).

Then the server's CPU per refused request, with nothing else to do: a model that
sleeps (the test suite's ``slow`` backend) holds its one-request queue full while
eight clients send requests it refuses, with a tiny body, a 600 KB body, and a
600 KB body announced with ``Expect: 100-continue``.

``--client-cpus 0`` runs the load generator on CPU 0 and the server on the others
(capacity measured the same way), so what the clients spend on sending is not taken
from the server; without it both share every CPU.

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
import socket
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

SLOW_PLUGINS = HERE.parent / "tests" / "scheduler_plugins"

#: Model config per policy (none batches: every request is its own call, the harder case).
POLICIES: dict[str, dict[str, Any]] = {
    "queue256": {"instance_count": 1, "max_queue_size": 256, "max_queue_wait_ms": 0},
    "queue16": {"instance_count": 1, "max_queue_size": 16, "max_queue_wait_ms": 0},
    "wait": {"instance_count": 1},
    "wait_expect": {"instance_count": 1},
}


def refusal_cost(folder: Path, args: argparse.Namespace, client_cpus: set[int] | None, server_cpus: Any) -> list:
    """Server CPU ms per refused request, by body size and ``Expect``; the queue held full by a sleeping model."""
    repo = folder / "refusal"
    (repo / "held" / "1").mkdir(parents=True)
    (repo / "held" / "1" / "slow.toml").write_text("")
    config = {"instance_count": 1, "max_queue_size": 1, "parameters": {"delay_s": 3600.0}}
    (repo / "held" / "config.toml").write_text(tomli_w.dumps(config))
    node = Node(repo, folder, cpus=server_cpus, plugins_dir=SLOW_PLUGINS)
    held = []
    try:
        doc = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'
        for _ in range(2):  # one running, one queued: every later request is refused
            conn = socket.create_connection(("127.0.0.1", node.http))
            head = f"POST /v2/models/held/infer HTTP/1.1\r\nHost: b\r\nContent-Length: {len(doc)}\r\n\r\n"
            conn.sendall(head.encode() + doc)
            held.append(conn)
            time.sleep(0.5)
        rows = []
        for floats, expect in ((4, False), (150528, False), (150528, True)):
            r = loadgen(node, "held", f"1,{floats}", "binary", args, client_cpus, concurrency=8, expect=expect)
            refused = r["outcomes"].get("429", 0)
            cost_us = r["server_cpu_s"] * 1e6 / refused
            rows.append([f"{floats * 4} B", "yes" if expect else "no", refused / args.duration, round(cost_us)])
        return rows
    finally:
        for conn in held:
            conn.close()
        node.proc.kill()
        node.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mnv2")
    p.add_argument("--loads", default="0.84,2", help="offered load as multiples of the measured capacity")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--protocol", default="binary", choices=("json", "binary"))
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=10.0, help="the clients' own timeout, seconds")
    p.add_argument("--client-cpus", default="", help="CPUs for the load generator (e.g. 0); the server gets the rest")
    args = p.parse_args()
    client_cpus = {int(c) for c in args.client_cpus.split(",") if c} or None
    server_cpus = set(os.sched_getaffinity(0)) - client_cpus if client_cpus else None
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
        node = Node(repo, folder, cpus=server_cpus)
        try:
            for m in models:
                shape = ",".join(map(str, (1, *SHAPES[m])))
                cap = loadgen(node, f"{m}_wait", shape, "binary", args, client_cpus, concurrency=8)["rps"]
                for load, pol in tqdm([(x, pol) for x in loads for pol in policies], desc=m):
                    time.sleep(1)  # let the last run's stragglers finish
                    r = loadgen(
                        node,
                        f"{m}_{pol}",
                        shape,
                        args.protocol,
                        args,
                        client_cpus,
                        rate=load * cap,
                        timeout=args.timeout,
                        expect=pol.endswith("_expect"),
                    )
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
        costs = refusal_cost(folder, args, client_cpus, server_cpus)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"command: python benchmarks/overload.py {' '.join(sys.argv[1:])}\n")
    header = ["model", "policy", "load", "capacity/s", "200/s", "goodput", "429/s", "503/s", "lost", "p50 ms", "p99 ms"]
    print(table(header, rows))
    print("\nserver CPU per refused request (queue held full):\n")
    print(table(["body", "Expect", "429/s", "server CPU µs"], costs))


if __name__ == "__main__":
    main()
