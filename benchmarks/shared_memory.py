"""Shared memory benchmark: binary tensors on the wire against system shared memory, side by side.

Usage::

    python benchmarks/shared_memory.py [--sizes-mb 1,4] [--modes binary,grpc,shm-http,shm-grpc]
        [--duration 3] [--warmup 0.5]

Starts one ``dlinfer-core`` subprocess with ``server.shared_memory = true`` serving an FP32
identity model, and for each point runs the load generator in its own process (this script
with ``--worker``): tritonclient, closed loop, one request at a time, a tensor of the given
size in and the same size out. ``binary`` is HTTP with the binary tensor extension, ``grpc``
raw gRPC contents; ``shm-http`` and ``shm-grpc`` pass input and output through registered
POSIX shared memory regions (tritonclient.utils.shared_memory). The client does the work a real
one would on every request: it writes the input (into the body or the region) and copies the
output out. ``srv ms`` is the server's CPU per request, from /proc.
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

import numpy as np
import orjson
import tomli_w

from dlinfer.testing import free_port, onnx_identity_model, write_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import cpu_seconds  # noqa: E402
from serving import Started, fmt, run_json, table  # noqa: E402

MODES = ("binary", "grpc", "shm-http", "shm-grpc")


class ShmNode(Started):
    """``dlinfer-core`` serving ``repo`` with the system shared memory extension on (ONNX plugin only)."""

    def __init__(self, repo: Path, folder: Path) -> None:
        self.http, self.grpc = free_port(), free_port()
        cfg = {
            "server": {"host": "127.0.0.1", "http_port": self.http, "grpc_port": self.grpc, "shared_memory": True},
            "repository": {"path": str(repo)},
            "logging": {"level": "warning"},
        }
        (folder / "node.toml").write_text(tomli_w.dumps(cfg))
        env = {**os.environ, "DLINFER_DISABLE_PLUGIN_AUTOLOAD": "1", "DLINFER_PLUGINS": "onnx"}
        exe = shutil.which("dlinfer-core", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "dlinfer.cli"]
        self._start([*cmd, "--config", str(folder / "node.toml")], env)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop run of ``args.mode``; returns req/s, p50 (ms) and CPU per request."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    x = np.random.default_rng(0).standard_normal((1, args.elements)).astype(np.float32)
    use_grpc = args.mode in ("grpc", "shm-grpc")
    lib: Any = grpcclient if use_grpc else httpclient
    client = (
        grpcclient.InferenceServerClient(f"127.0.0.1:{args.grpc_port}")
        if use_grpc
        else httpclient.InferenceServerClient(f"127.0.0.1:{args.http_port}", connection_timeout=60, network_timeout=60)
    )
    inp = lib.InferInput("x", list(x.shape), "FP32")
    out = lib.InferRequestedOutput("y", **({} if use_grpc else {"binary_data": True}))
    handles = []
    if args.mode.startswith("shm"):
        tag = f"bench_{os.getpid()}"
        for name in ("in", "out"):
            handles.append(shm.create_shared_memory_region(f"{tag}_{name}", f"/{tag}_{name}", x.nbytes))
            client.register_system_shared_memory(f"{tag}_{name}", f"/{tag}_{name}", x.nbytes)
        inp.set_shared_memory(f"{tag}_in", x.nbytes)
        out.set_shared_memory(f"{tag}_out", x.nbytes)

    def once() -> np.ndarray:
        if handles:
            shm.set_shared_memory_region(handles[0], [x])
            client.infer("id", [inp], outputs=[out])
            return np.array(shm.get_contents_as_numpy(handles[1], np.float32, x.shape))
        inp.set_data_from_numpy(x, **({} if use_grpc else {"binary_data": True}))
        return client.infer("id", [inp], outputs=[out]).as_numpy("y")

    assert np.array_equal(once(), x)
    until = time.perf_counter() + args.warmup
    while time.perf_counter() < until:
        once()
    latencies = []
    cpu0, client0, t0 = cpu_seconds(args.server_pid), time.process_time(), time.perf_counter()
    until = t0 + args.duration
    while (now := time.perf_counter()) < until:
        once()
        latencies.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - t0
    server_cpu, client_cpu = cpu_seconds(args.server_pid) - cpu0, time.process_time() - client0
    if handles:
        client.unregister_system_shared_memory()
        for h in handles:
            shm.destroy_shared_memory_region(h)
    n = len(latencies)
    return {
        "rps": n / elapsed,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "server_cpu_ms_per_req": server_cpu * 1e3 / n,
        "client_cpu_ms_per_req": client_cpu * 1e3 / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-mb", default="1,4")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--elements", type=int, help=argparse.SUPPRESS)
    p.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(orjson.dumps(worker(args)).decode())
        return

    sizes = [float(s) for s in args.sizes_mb.split(",")]
    modes = args.modes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_model(folder / "models", "id", 1, {"model.onnx": onnx_identity_model("FP32", ["batch", "n"])})
        node = ShmNode(folder / "models", folder)
        try:
            for mb in sizes:
                elements = int(mb * 2**20) // 4
                base: dict[str, Any] | None = None
                for mode in modes:
                    cmd = [
                        str(Path(__file__).resolve()),
                        "--worker",
                        f"--mode={mode}",
                        f"--elements={elements}",
                        f"--http-port={node.http}",
                        f"--grpc-port={node.grpc}",
                        f"--server-pid={node.pid}",
                        f"--duration={args.duration}",
                        f"--warmup={args.warmup}",
                    ]
                    r = run_json(cmd)
                    base = base or r
                    rows.append(
                        [
                            f"{mb:g} MB",
                            mode,
                            fmt(r["rps"]),
                            fmt(r["p50_ms"], 2),
                            fmt(r["server_cpu_ms_per_req"], 2),
                            fmt(r["client_cpu_ms_per_req"], 2),
                            f"{r['rps'] / base['rps']:.2f}x",
                        ]
                    )
                    print(f"{mb:g} MB {mode}: {r}", file=sys.stderr)
        finally:
            node.stop()
    print(table(["tensor", "mode", "req/s", "p50 ms", "srv ms", "cli ms", f"req/s vs {modes[0]}"], rows))
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")


if __name__ == "__main__":
    main()
