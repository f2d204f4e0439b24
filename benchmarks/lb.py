"""Load-balancing gateway benchmark: overhead against a direct node, and scaling over nodes.

Usage::

    python benchmarks/lb.py [--duration 5] [--warmup 1] [--scaling-model mnv2] [--protocols binary,grpc]
        [--json out.json]

1. Overhead: one ``dlinfer-core`` node and one gateway (``dlinfer-core`` with
   ``[plugins.lb] enabled = true``) in front of it, each in its own process. The
   load generator (``loadgen.py``, its own process; binary tensors over HTTP, raw
   contents over gRPC) runs against the node and against the gateway at
   concurrency 1 and 16, for a tiny model (``linear``: protocol cost dominates,
   the worst case for a proxy) and a small CNN.
2. Scaling: three nodes each serving a CPU-bound model with one thread; three
   gateways (least outstanding requests) in front of 1, 2 and 3 of them, and the
   first node direct, measured in alternating rounds at concurrency 16.

Every process runs on the same cores; the CPU milliseconds per request of the
node(s) and of the gateway (from /proc) are reported beside req/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import tomli_w
from tqdm import tqdm

from dlinfer.testing import free_port

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_models import SHAPES, write  # noqa: E402
from loadgen import cpu_seconds  # noqa: E402
from servers import wait_http  # noqa: E402

LOCAL_V2 = ["dlinfer.server.v2_http", "dlinfer.server.v2_grpc"]


class Process:
    """``dlinfer-core`` with a node.toml, in a subprocess; ``url`` once ready."""

    def __init__(self, folder: Path, config: dict[str, Any], plugins: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port, self.grpc_port = free_port(), free_port()
        config = {
            **config,
            "server": {"host": "127.0.0.1", "http_port": self.port, "grpc_port": self.grpc_port},
            "logging": {"level": "warning"},
        }
        (folder / "node.toml").write_text(tomli_w.dumps(config))
        env = {**os.environ, "DLINFER_DISABLE_PLUGIN_AUTOLOAD": "1", "DLINFER_PLUGINS": plugins}
        exe = shutil.which("dlinfer-core", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "dlinfer.cli"]
        self.proc = subprocess.Popen([*cmd, "--config", str(folder / "node.toml")], env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        wait_http(f"{self.url}/v2/health/ready", self.proc, timeout_s=120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def node(folder: Path, repo: Path) -> Process:
    return Process(folder, {"repository": {"path": str(repo)}, "threads": {"intra_op": 1}}, "onnx")


def gateway(folder: Path, nodes: list[Process], strategy: str) -> Process:
    lb = {"enabled": True, "strategy": strategy, "nodes": [{"url": n.url, "grpc": n.grpc} for n in nodes]}
    return Process(folder, {"repository": {"path": "none"}, "plugins": {"disable": LOCAL_V2, "lb": lb}}, "lb")


def loadgen(
    url: str, model: str, shape: str, concurrency: int, args: argparse.Namespace, protocol: str = "binary"
) -> dict[str, Any]:
    cmd = [str(HERE / "loadgen.py"), "--url", url, "--model", model, "--shape", shape, "--protocol", protocol]
    cmd += ["--concurrency", str(concurrency), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    out = subprocess.run([sys.executable, *cmd], check=True, capture_output=True, text=True)
    return orjson.loads(out.stdout.strip().splitlines()[-1])


def measured(
    url: str, model: str, shape: str, c: int, args: argparse.Namespace, pids: dict[str, list[int]], protocol: str
) -> dict:
    """One load point, with the CPU seconds each group of processes spent per answered request."""
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    r = loadgen(url, model, shape, c, args, protocol)
    after = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    answered = r["rps"] * (args.duration + args.warmup)  # CPU covers warmup too: close enough per request
    for k in pids:
        r[f"{k}_cpu_ms"] = (after[k] - before[k]) * 1000 / answered if answered else None
    return r


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key median over rounds: one noisy round on a shared machine does not decide a row."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) or v is None]
    out: dict[str, Any] = {}
    for k in keys:
        values = sorted(r[k] for r in runs if r.get(k) is not None)
        out[k] = values[len(values) // 2] if values else None
    return out


def alternated(
    points: list[tuple[str, dict[str, list[int]]]],
    model: str,
    shape: str,
    c: int,
    args: argparse.Namespace,
    protocol: str,
) -> list[dict[str, Any]]:
    """Each target of ``points`` measured ``args.rounds`` times, interleaved, as medians."""
    runs: list[list[dict[str, Any]]] = [[] for _ in points]
    for _ in range(args.rounds):
        for i, (url, pids) in enumerate(points):
            runs[i].append(measured(url, model, shape, c, args, pids, protocol))
    return [median_of(r) for r in runs]


def fmt(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per point; medians are reported")
    p.add_argument("--scaling-model", default="mnv2", choices=sorted(SHAPES))
    p.add_argument("--protocols", default="binary,grpc", help="overhead protocols: binary (HTTP), grpc")
    p.add_argument("--parts", default="overhead,scaling", help="which parts to run")
    p.add_argument("--json", type=Path, help="write the raw results here")
    args = p.parse_args()
    from dlinfer.testing import onnx_linear_model

    results: dict[str, Any] = {"overhead": [], "scaling": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = root / "models"
        (repo / "linear" / "1").mkdir(parents=True)
        (repo / "linear" / "1" / "model.onnx").write_bytes(onnx_linear_model(64, 10))
        write("cnn", repo / "cnn" / "1" / "model.onnx")
        write(args.scaling_model, repo / args.scaling_model / "1" / "model.onnx")
        shapes = {"linear": "1,64", **{m: "1," + ",".join(map(str, SHAPES[m])) for m in SHAPES}}
        nodes = [node(root / f"node{i}", repo) for i in (1, 2, 3)]
        try:
            if "overhead" in args.parts:
                overhead(nodes, root, shapes, args, results)
            if "scaling" in args.parts:
                scaling(nodes, root, shapes, args, results)
        finally:
            for n in nodes:
                n.stop()
    report(results, args)
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


def overhead(
    nodes: list[Process], root: Path, shapes: dict[str, str], args: argparse.Namespace, results: dict[str, Any]
) -> None:
    gw = gateway(root / "gw1", nodes[:1], "least_outstanding")
    try:
        points = [(pr, m, c) for pr in args.protocols.split(",") for m in ("linear", "cnn") for c in (1, 16)]
        for pr, m, c in tqdm(points, desc="overhead"):
            n0, pids = nodes[0].proc.pid, {"node": [nodes[0].proc.pid], "gw": [gw.proc.pid]}
            grpc = pr == "grpc"
            direct, via = alternated(
                [(nodes[0].grpc if grpc else nodes[0].url, {"node": [n0]}), (gw.grpc if grpc else gw.url, pids)],
                m,
                shapes[m],
                c,
                args,
                pr,
            )
            results["overhead"].append({"protocol": pr, "model": m, "concurrency": c, "direct": direct, "gateway": via})
    finally:
        gw.stop()


def scaling(
    nodes: list[Process], root: Path, shapes: dict[str, str], args: argparse.Namespace, results: dict[str, Any]
) -> None:
    """Direct and via gateways over 1, 2 and 3 nodes, all started at once and measured in alternating rounds."""
    m = args.scaling_model
    gateways = [gateway(root / f"gws{n}", nodes[:n], "least_outstanding") for n in (1, 2, 3)]
    try:
        targets = [(nodes[0].url, {"node": [nodes[0].proc.pid]})]
        targets += [
            (g.url, {"node": [x.proc.pid for x in nodes[:n]], "gw": [g.proc.pid]}) for n, g in enumerate(gateways, 1)
        ]
        medians = alternated(targets, m, shapes[m], 16, args, "binary")
        for label, point in zip(("1 direct", "1", "2", "3"), medians, strict=True):
            results["scaling"].append({"nodes": label, **point})
    finally:
        for g in gateways:
            g.stop()


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cores; python {platform.python_version()}")
    rows = []
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min)")
    for r in results["overhead"]:
        d, g = r["direct"], r["gateway"]
        rows.append(
            [
                "http" if r["protocol"] == "binary" else r["protocol"],
                r["model"],
                r["concurrency"],
                d["rps"],
                g["rps"],
                100 * g["rps"] / d["rps"] if d["rps"] else None,
                d["p50_ms"],
                g["p50_ms"],
                g["p50_ms"] - d["p50_ms"] if d["p50_ms"] and g["p50_ms"] else None,
                d["node_cpu_ms"],
                g["node_cpu_ms"],
                g["gw_cpu_ms"],
            ]
        )
    print("\ngateway overhead (binary tensors over HTTP, raw contents over gRPC; closed loop)")
    header = ["protocol", "model", "conc", "direct req/s", "gw req/s", "gw % direct"]
    header += ["direct p50 ms", "gw p50 ms", "added p50 ms"]
    print(table([*header, "node cpu ms/req direct", "node cpu ms/req via gw", "gw cpu ms/req"], rows))
    if not results["scaling"]:
        return
    base = results["scaling"][1]["rps"] if len(results["scaling"]) > 1 else None
    rows = [
        [
            r["nodes"],
            r["rps"],
            r["rps"] / base if base else None,
            r["p50_ms"],
            r["p99_ms"],
            r["node_cpu_ms"],
            r.get("gw_cpu_ms"),
        ]
        for r in results["scaling"]
    ]
    print(f"\nscaling over nodes ({args.scaling_model}, 1 thread per node, concurrency 16, least outstanding)")
    print(table(["nodes", "req/s", "x 1 node via gw", "p50 ms", "p99 ms", "node cpu ms/req", "gw cpu ms/req"], rows))


if __name__ == "__main__":
    main()
