"""Serving benchmark: dlinfer against the same runtime in-process, side by side in one run.

Usage::

    python benchmarks/serving.py [--models cnn,mnv2] [--concurrency 1,8,16]
        [--protocols json,binary,grpc] [--variants direct,x2,batched]
        [--duration 5] [--warmup 1] [--no-overload] [--json out.json]

Builds the models (``bench_models.py``), starts one ``dlinfer-core`` subprocess
serving every model x variant, and for each point starts the load generator
(``loadgen.py``) in its own process: batch-1 requests, closed loop at the given
concurrency. The in-process ceiling (``inprocess.py``: the same ONNX Runtime
session settings called from as many threads, best of all-cores and one-core
sessions) is measured in the same run, so ``% ceil`` compares like with like.

Variants: ``direct`` = one instance using every core; ``x2`` = two instances of
one core each; ``batched`` = one instance with ``[dynamic_batching]`` (no delay:
a free instance takes whatever is queued). The overload run offers twice the
measured capacity of ``batched`` open loop, with a queue limit of 16, and reports
what was admitted, refused (429) and lost.

The load generator runs on the same cores as the server: its CPU is reported
(``cli ms``) and the server's own CPU per request (``srv ms``, from /proc) is the
steadiest figure on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import tomli_w
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_models import SHAPES, write  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "direct": {"instance_count": 1},
    "x2": {"instance_count": 2},
    "batched": {"instance_count": 1, "max_batch_size": 16, "dynamic_batching": {}},
}
OVERLOAD = {"instance_count": 1, "max_batch_size": 16, "dynamic_batching": {}, "max_queue_size": 16}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """``dlinfer-core`` in a subprocess, serving ``repo``; only the ONNX plugin is loaded."""

    def __init__(self, repo: Path, folder: Path) -> None:
        self.http, self.grpc = free_port(), free_port()
        cfg = {
            "server": {"host": "127.0.0.1", "http_port": self.http, "grpc_port": self.grpc},
            "repository": {"path": str(repo)},
            "logging": {"level": "warning"},
        }
        (folder / "node.toml").write_text(tomli_w.dumps(cfg))
        env = {**os.environ, "DLINFER_DISABLE_PLUGIN_AUTOLOAD": "1", "DLINFER_PLUGINS": "onnx"}
        exe = shutil.which("dlinfer-core", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "dlinfer.cli"]
        self.proc = subprocess.Popen([*cmd, "--config", str(folder / "node.toml")], env=env)
        self.url = f"http://127.0.0.1:{self.http}"
        until = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > until:
                raise RuntimeError("dlinfer-core did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def run_json(cmd: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, *cmd], check=True, capture_output=True, text=True)
    return orjson.loads(out.stdout.strip().splitlines()[-1])


def loadgen(node: Node, model: str, shape: str, protocol: str, args: argparse.Namespace, **extra: Any) -> dict:
    url = f"127.0.0.1:{node.grpc}" if protocol == "grpc" else node.url
    cmd = [
        str(HERE / "loadgen.py"),
        f"--url={url}",
        f"--model={model}",
        f"--shape={shape}",
        f"--protocol={protocol}",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
        f"--server-pid={node.proc.pid}",
    ]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]
    return run_json(cmd)


def ceiling(model_file: Path, shape: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """Best in-process figure: sessions using every core, or one core, called from ``concurrency`` threads."""
    best: dict[str, Any] = {}
    for threads in (0, 1):
        r = run_json(
            [
                str(HERE / "inprocess.py"),
                f"--model={model_file}",
                f"--shape={shape}",
                f"--threads={threads}",
                f"--concurrency={concurrency}",
                f"--duration={args.duration}",
                f"--warmup={args.warmup}",
            ]
        )
        if r["rps"] > best.get("rps", 0):
            best = {**r, "threads": threads or os.cpu_count()}
    return best


def fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cnn,mnv2")
    p.add_argument("--concurrency", default="1,8,16")
    p.add_argument("--protocols", default="json,binary,grpc")
    p.add_argument("--variants", default="direct,x2,batched")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--no-overload", action="store_true")
    p.add_argument("--json", type=Path, help="also write every result here")
    args = p.parse_args()
    models = args.models.split(",")
    concs = [int(c) for c in args.concurrency.split(",")]
    protocols = args.protocols.split(",")
    variants = args.variants.split(",")
    results: dict[str, Any] = {"serving": [], "ceiling": [], "overload": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        repo = folder / "models"
        files = {}
        for m in tqdm(models, desc="building models"):
            files[m] = write(m, folder / "src" / m / "model.onnx")
            for v, cfg in [*((v, VARIANTS[v]) for v in variants), ("overload", OVERLOAD)]:
                (repo / f"{m}_{v}" / "1").mkdir(parents=True)
                shutil.copy(files[m], repo / f"{m}_{v}" / "1" / "model.onnx")
                (repo / f"{m}_{v}" / "config.toml").write_text(tomli_w.dumps(cfg))
        points = [(m, c) for m in models for c in concs]
        for m, c in tqdm(points, desc="in-process ceiling"):
            shape = ",".join(map(str, (1, *SHAPES[m])))
            results["ceiling"].append({"model": m, "concurrency": c, **ceiling(files[m], shape, c, args)})
        node = Node(repo, folder)
        try:
            runs = [(m, c, pr, v) for m in models for c in concs for pr in protocols for v in variants]
            for m, c, pr, v in tqdm(runs, desc="dlinfer"):
                shape = ",".join(map(str, (1, *SHAPES[m])))
                r = loadgen(node, f"{m}_{v}", shape, pr, args, concurrency=c)
                results["serving"].append({"model": m, "concurrency": c, "protocol": pr, "variant": v, **r})
            if not args.no_overload:
                for m in tqdm(models, desc="overload"):
                    shape = ",".join(map(str, (1, *SHAPES[m])))
                    cap = max(
                        (r["rps"] for r in results["serving"] if r["model"] == m and r["variant"] == "batched"),
                        default=0,
                    ) or max(r["rps"] for r in results["serving"] if r["model"] == m)
                    pr = "binary" if "binary" in protocols else protocols[0]
                    r = loadgen(node, f"{m}_overload", shape, pr, args, rate=2 * cap)
                    results["overload"].append(
                        {"model": m, "protocol": pr, "capacity_rps": cap, "offered_rps": 2 * cap, **r}
                    )
        finally:
            node.stop()
    report(results, args)
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    ceil = {(r["model"], r["concurrency"]): r for r in results["ceiling"]}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"command: python benchmarks/serving.py {' '.join(sys.argv[1:])}\n")
    print("In-process ceiling (same runtime and session settings, batch 1, N threads):\n")
    print(
        table(
            ["model", "c", "inf/s", "CPU ms/inf", "session threads"],
            [[r["model"], r["concurrency"], r["rps"], r["cpu_ms_per_inf"], r["threads"]] for r in results["ceiling"]],
        )
    )
    print("\ndlinfer (batch-1 requests, closed loop):\n")
    rows = []
    for r in results["serving"]:
        c = ceil[(r["model"], r["concurrency"])]
        errors = sum(n for k, n in r["outcomes"].items() if k != "200")
        rows.append(
            [
                r["model"],
                r["concurrency"],
                r["protocol"],
                r["variant"],
                r["rps"],
                r["p50_ms"],
                r["p99_ms"],
                r["server_cpu_ms_per_req"],
                r["client_cpu_ms_per_req"],
                f"{100 * r['rps'] / c['rps']:.0f}%",
                errors,
            ]
        )
    print(
        table(
            ["model", "c", "protocol", "variant", "req/s", "p50 ms", "p99 ms", "srv ms", "cli ms", "% ceil", "errors"],
            rows,
        )
    )
    if results["overload"]:
        print("\nOverload (open loop at 2x the capacity of `batched`, queue limit 16):\n")
        rows = []
        for r in results["overload"]:
            o = r["outcomes"]
            lost = sum(n for k, n in o.items() if k not in ("200", "429", "503"))
            rows.append(
                [r["model"], r["protocol"], r["offered_rps"], r["rps"], o.get("429", 0), lost, r["p50_ms"], r["p99_ms"]]
            )
        print(table(["model", "protocol", "offered/s", "answered/s", "429", "lost", "p50 ms", "p99 ms"], rows))


if __name__ == "__main__":
    main()
