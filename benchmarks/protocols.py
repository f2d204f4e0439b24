"""V2 JSON vs binary-tensor HTTP vs gRPC, with the real tritonclient, side by side.

Starts ``dlinfer-core`` in its own process on a tiny ONNX classifier (1x4 input)
and an FP32 identity model (1 MB and 4 MB tensors), then runs closed-loop
clients at each concurrency for ``--seconds`` per cell and prints one table:
requests/s, median and p99 latency, the server's CPU milliseconds per request
(the steadiest figure on a shared machine), requests/s as a ratio of JSON's, and
ONNX Runtime in-process calls/s on the same input as the ceiling. Cells run
``--repeats`` times in rotation and each figure is the median of its repeats, so
a burst of load from other processes does not land on one protocol only::

    python benchmarks/protocols.py --seconds 3 --repeats 3 --concurrency 1 16
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from loadgen import cpu_seconds
from servers import wait_http

from dlinfer.testing import free_ports, onnx_identity_model, onnx_linear_model, write_model

PROTOCOLS = ("json", "binary", "grpc")


def payloads() -> dict[str, tuple[str, np.ndarray, str]]:
    """name -> (model, input, output to fetch)."""
    rng = np.random.default_rng(0)
    return {
        "small 1x4": ("linear", rng.standard_normal((1, 4)).astype(np.float32), "probs"),
        "1 MB": ("identity", rng.standard_normal((1, 262_144)).astype(np.float32), "y"),
        "4 MB": ("identity", rng.standard_normal((1, 1_048_576)).astype(np.float32), "y"),
    }


def make_call(
    protocol: str, http_port: int, grpc_port: int, model: str, x: np.ndarray, output: str
) -> Callable[[], Any]:
    """A function that sends one request and checks the answer's shape."""
    if protocol == "grpc":
        import tritonclient.grpc as client_lib

        client = client_lib.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        binary = True
    else:
        import tritonclient.http as client_lib

        client = client_lib.InferenceServerClient(f"127.0.0.1:{http_port}", connection_timeout=120, network_timeout=120)
        binary = protocol == "binary"
    inp = client_lib.InferInput("x", list(x.shape), "FP32")
    if protocol == "grpc":
        inp.set_data_from_numpy(x)
        out = client_lib.InferRequestedOutput(output)
    else:
        inp.set_data_from_numpy(x, binary_data=binary)
        out = client_lib.InferRequestedOutput(output, binary_data=binary)

    def call() -> Any:
        result = client.infer(model, [inp], outputs=[out]).as_numpy(output)
        assert result is not None and result.shape[0] == x.shape[0]

    return call


def closed_loop(
    new_call: Callable[[], Callable[[], None]], concurrency: int, seconds: float, server_pid: int
) -> dict[str, float]:
    """One closed-loop measurement: ``concurrency`` threads, each with the call ``new_call``
    makes for it, for ``seconds``; req/s, p50/p99 latency (ms), server CPU-ms per request.

    Clients are made inside their threads: tritonclient's HTTP client runs on
    greenlets that must stay on the thread that created them.
    """
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    ready = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker() -> None:
        nonlocal failures
        call = new_call()
        call()  # warm the connection up
        ready.wait()
        ready.wait()  # the measured window starts
        while time.monotonic() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                call()
            except Exception:
                with lock:
                    failures += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
    stop_at[0] = t0 + seconds
    ready.wait()
    for t in threads:
        t.join()
    wall, cpu = time.monotonic() - t0, cpu_seconds(server_pid) - cpu0
    n = len(latencies)
    lat = np.array(latencies) * 1000 if n else np.array([np.nan])
    return {
        "rps": n / wall,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "cpu_ms": cpu * 1000 / n if n else float("nan"),
        "failures": failures,
    }


def run_cell(
    protocol: str, concurrency: int, seconds: float, ports: tuple[int, int], server_pid: int, payload: tuple
) -> dict[str, float]:
    model, x, output = payload
    return closed_loop(lambda: make_call(protocol, *ports, model, x, output), concurrency, seconds, server_pid)


def in_process_rate(model_bytes: bytes, x: np.ndarray, seconds: float, tries: int = 3) -> float:
    """ONNX Runtime calls/s on the same input, one thread, no server: the ceiling
    (best of ``tries`` windows, as other processes only ever slow it down)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    best = 0.0
    for _ in range(tries):
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            session.run(None, {"x": x})
            n += 1
        best = max(best, n / seconds)
    return best


def start_server(
    root: Path, plugin: str = "onnx", ready_path: str = "/v2/health/ready", wait_s: float = 60, **env: str
) -> tuple[subprocess.Popen, int, int]:
    """``dlinfer-core`` on ``root`` with only ``plugin`` loaded; waits until ``ready_path`` answers 200."""
    http_port, grpc_port = free_ports(2)
    env = {**os.environ, "DLINFER_DISABLE_PLUGIN_AUTOLOAD": "1", "DLINFER_PLUGINS": plugin, **env}
    cmd = [sys.executable, "-m", "dlinfer.cli", "--model-repository", str(root)]
    cmd += ["--port", str(http_port), "--grpc-port", str(grpc_port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env)
    try:
        wait_http(f"http://127.0.0.1:{http_port}{ready_path}", proc, timeout_s=wait_s)
    except RuntimeError:
        proc.kill()
        raise
    return proc, http_port, grpc_port


def progress(items: list[Any], label: str) -> Any:
    try:
        from rich.progress import track
    except ImportError:
        return items
    return track(items, description=label, transient=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    p.add_argument("--repeats", type=int, default=3, help="runs of every cell, in rotation; medians are reported")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--payloads", nargs="+", default=list(payloads()), help="subset of: " + ", ".join(payloads()))
    args = p.parse_args(argv)

    chosen = {k: v for k, v in payloads().items() if k in args.payloads}
    models = {"linear": onnx_linear_model(), "identity": onnx_identity_model("FP32", ["batch", "n"])}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        for name, blob in models.items():
            write_model(root, name, 1, {"model.onnx": blob}, config={"instance_count": 2})
        ceiling = {name: in_process_rate(models[payload[0]], payload[1], 1.0) for name, payload in chosen.items()}
        proc, http_port, grpc_port = start_server(root)
        cells = [(pl, c, pr) for pl in chosen for c in args.concurrency for pr in PROTOCOLS]
        runs: dict[tuple[str, int, str], list[dict[str, float]]] = {cell: [] for cell in cells}
        try:
            for pl, c, pr in progress(cells * args.repeats, "benchmarking"):
                runs[pl, c, pr].append(run_cell(pr, c, args.seconds, (http_port, grpc_port), proc.pid, chosen[pl]))
        finally:
            proc.terminate()
            proc.wait(30)
    results = {
        cell: {k: float(np.median([r[k] for r in rs])) if k != "failures" else sum(r[k] for r in rs) for k in rs[0]}
        for cell, rs in runs.items()
    }

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.seconds:g} s per cell, median of {args.repeats}"
    )
    print("| payload | conc | protocol | req/s | p50 ms | p99 ms | server CPU ms/req | vs JSON | % of in-process |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for pl, c, pr in cells:
        r = results[pl, c, pr]
        base = results[pl, c, "json"]["rps"] or float("nan")
        fail = f" ({int(r['failures'])} failed)" if r["failures"] else ""
        print(
            f"| {pl} | {c} | {pr} | {r['rps']:.0f}{fail} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_ms']:.2f} "
            f"| {r['rps'] / base:.2f}x | {100 * r['rps'] / ceiling[pl]:.0f}% |"
        )
    print("\nin-process ONNX Runtime calls/s: " + ", ".join(f"{k}: {v:.0f}" for k, v in ceiling.items()))


if __name__ == "__main__":
    main()
