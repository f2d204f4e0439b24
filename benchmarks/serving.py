"""Serving benchmark: dlinfer against the same runtime in-process, side by side in one run.

Usage::

    python benchmarks/serving.py [--models cnn,mnv2] [--concurrency 1,8,16]
        [--protocols json,binary,grpc] [--variants direct,x2,batched]
        [--duration 5] [--warmup 1] [--no-overload] [--peers bare,mlserver,torchserve]
        [--json out.json]

Builds the models (``bench_models.py``), starts one ``dlinfer-core`` subprocess
serving every model x variant, and for each point starts the load generator
(``loadgen.py``) in its own process: batch-1 requests, closed loop at the given
concurrency. The in-process ceiling (``inprocess.py``: the same ONNX Runtime
session settings called from as many threads, best of all-cores and one-core
sessions) is measured in the same run, so ``% ceil`` compares like with like.

Variants: ``direct`` = one instance using every core; ``x2`` = two instances of
one core each; ``batched`` = one instance with ``[dynamic_batching]`` (no delay:
a free instance takes whatever is queued); ``batched_x2`` = both (opt in with
``--variants``). The overload run offers twice the
measured capacity of ``batched`` open loop, with a queue limit of 16, and reports
what was admitted, refused (429) and lost.

Peers (``--peers``, default ``bare``): ``bare`` is ``bare_server.py``, a bare
aiohttp + ONNX Runtime server with no scheduler, metrics or checks (one session
per core), the floor any Python server pays for HTTP; ``mlserver`` and
``torchserve`` are installed into their own venvs.

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
from pathlib import Path
from typing import Any

import orjson
import tomli_w
from tqdm import tqdm

from dlinfer.testing import free_port

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_models import SHAPES, write  # noqa: E402
from servers import wait_http  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "direct": {"instance_count": 1},
    "x2": {"instance_count": 2},
    "batched": {"instance_count": 1, "max_batch_size": 16, "dynamic_batching": {}},
    "batched_x2": {"instance_count": 2, "max_batch_size": 16, "dynamic_batching": {}},
}
OVERLOAD = {"instance_count": 1, "max_batch_size": 16, "dynamic_batching": {}, "max_queue_size": 16}


class Started:
    """A server subprocess on ``http`` (and ``grpc``) ports, ready when constructed; SIGTERM stops it."""

    http: int
    grpc: int = 0
    proc: subprocess.Popen

    def _start(
        self, cmd: list[str], env: dict[str, str] | None = None, timeout_s: float = 120, cpus: set[int] | None = None
    ) -> None:
        self.proc = subprocess.Popen(cmd, env=env, preexec_fn=pinned(cpus))
        try:
            wait_http(f"http://127.0.0.1:{self.http}/v2/health/ready", self.proc, timeout_s=timeout_s)
        except RuntimeError:
            self.proc.kill()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


class Node(Started):
    """``dlinfer-core`` in a subprocess, serving ``repo``, on ``cpus``; only the ONNX plugin is loaded
    (and the single-file plugins of ``plugins_dir``)."""

    def __init__(self, repo: Path, folder: Path, cpus: set[int] | None = None, plugins_dir: Path | None = None) -> None:
        self.http, self.grpc = free_port(), free_port()
        cfg: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "http_port": self.http, "grpc_port": self.grpc},
            "repository": {"path": str(repo)},
            "logging": {"level": "warning"},
        }
        plugins = "onnx"
        if plugins_dir:
            cfg["plugins"] = {"plugins_dir": str(plugins_dir)}
            plugins += "," + ",".join(f.stem for f in plugins_dir.glob("*.py"))
        (folder / "node.toml").write_text(tomli_w.dumps(cfg))
        env = {**os.environ, "DLINFER_DISABLE_PLUGIN_AUTOLOAD": "1", "DLINFER_PLUGINS": plugins}
        exe = shutil.which("dlinfer-core", path=str(Path(sys.executable).parent))
        cmd = [exe] if exe else [sys.executable, "-m", "dlinfer.cli"]
        self.url = f"http://127.0.0.1:{self.http}"
        self._start([*cmd, "--config", str(folder / "node.toml")], env, cpus=cpus)


class BareServer(Started):
    """``bare_server.py``: aiohttp + ONNX Runtime with no scheduler, one session per core."""

    def __init__(self, model: Path, sessions: int) -> None:
        self.http = free_port()
        cmd = [sys.executable, str(HERE / "bare_server.py"), f"--model={model}", f"--port={self.http}"]
        self._start([*cmd, f"--sessions={sessions}", "--threads=1"], timeout_s=60)


def pinned(cpus: set[int] | None) -> Any:
    """A ``preexec_fn`` running the child on ``cpus`` only (None: wherever the OS puts it)."""
    return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)


def run_json(cmd: list[str], cpus: set[int] | None = None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, *cmd], check=True, capture_output=True, text=True, preexec_fn=pinned(cpus))
    return orjson.loads(out.stdout.strip().splitlines()[-1])


def loadgen(
    node: Any,
    model: str,
    shape: str,
    protocol: str,
    args: argparse.Namespace,
    cpus: set[int] | None = None,
    **extra: Any,
) -> dict:
    """One load-generator run against ``node`` (anything with ``http``, ``grpc`` ports and ``pid``), on ``cpus``."""
    url = f"127.0.0.1:{node.grpc}" if protocol == "grpc" else f"http://127.0.0.1:{node.http}"
    cmd = [
        str(HERE / "loadgen.py"),
        f"--url={url}",
        f"--model={model}",
        f"--shape={shape}",
        f"--protocol={protocol}",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
        f"--server-pid={node.pid}",
    ]
    cmd += [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in extra.items() if v is not False]
    return run_json(cmd, cpus)


def ceiling(model_file: Path, shape: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """The runtime's best in-process throughput with at most ``concurrency`` callers.

    One caller on a session using every core, or (with two or more callers allowed)
    one thread per core each calling a one-thread session: more callers than cores
    only oversubscribe them.
    """
    cores = os.cpu_count() or 1
    best: dict[str, Any] = {}
    configs = [(0, 1)] + ([(1, min(concurrency, cores))] if concurrency > 1 else [(1, 1)])
    for threads, callers in configs:
        r = run_json(
            [
                str(HERE / "inprocess.py"),
                f"--model={model_file}",
                f"--shape={shape}",
                f"--threads={threads}",
                f"--concurrency={callers}",
                f"--duration={args.duration}",
                f"--warmup={args.warmup}",
            ]
        )
        if r["rps"] > best.get("rps", 0):
            best = {**r, "threads": threads or cores, "callers": callers}
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
    p.add_argument(
        "--peers",
        default="bare",
        help="also run these: bare (bare_server.py, the floor of a Python server), mlserver, torchserve (own venvs)",
    )
    p.add_argument("--venv-dir", type=Path, default=Path.home() / ".cache" / "dlinfer-bench", help="peer venvs")
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
        # With two or more callers the ceiling is the same whatever the concurrency: measure it once.
        points = [(m, c) for m in models for c in sorted({min(c, 2) for c in concs})]
        measured = {}
        for m, c in tqdm(points, desc="in-process ceiling"):
            shape = ",".join(map(str, (1, *SHAPES[m])))
            measured[(m, c)] = ceiling(files[m], shape, c, args)
        for m in models:
            for c in concs:
                results["ceiling"].append({"model": m, "concurrency": c, **measured[(m, min(c, 2))]})
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
                    r = loadgen(node, f"{m}_overload", shape, pr, args, rate=2 * cap, from_send=True)
                    results["overload"].append(
                        {"model": m, "protocol": pr, "capacity_rps": cap, "offered_rps": 2 * cap, **r}
                    )
        finally:
            node.stop()
        peers = [x for x in args.peers.split(",") if x]
        if peers:
            run_peers(peers, models, concs, files, folder, args, results)
    report(results, args)
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


def run_peers(
    peers: list[str],
    models: list[str],
    concs: list[int],
    files: dict[str, Path],
    folder: Path,
    args: argparse.Namespace,
    results: dict[str, Any],
) -> None:
    """The bare aiohttp floor, MLServer and TorchServe on the same models, same load, same machine."""
    import peers as pm

    def drive(
        server: Any, variant: str, names: dict[str, str], protocols: list[str], only: list[str] | None = None
    ) -> None:
        try:
            for m in only or models:
                shape = ",".join(map(str, (1, *SHAPES[m])))
                for c in concs:
                    for pr in protocols:
                        r = loadgen(server, names[m], shape, pr, args, concurrency=c)
                        results["serving"].append(
                            {"model": m, "concurrency": c, "protocol": pr, "variant": variant, **r}
                        )
        finally:
            server.stop()

    if "bare" in peers:
        for m in tqdm(models, desc="bare aiohttp"):
            drive(BareServer(files[m], sessions=os.cpu_count() or 1), "bare", {m: m}, ["binary"], [m])
    if "mlserver" in peers:
        bin_dir = pm.ensure_venv(args.venv_dir, "mlserver", pm.MLSERVER_PACKAGES)
        for batching in (False, True):
            variant = "mlserver-batched" if batching else "mlserver"
            with tqdm(total=1, desc=variant) as bar:
                spec = {m: (files[m], batching) for m in models}
                server = pm.MLServer(bin_dir, folder / variant, spec, threads=os.cpu_count() or 1)
                drive(server, variant, {m: m for m in models}, ["json", "grpc"])
                bar.update()
    if "torchserve" in peers:
        bin_dir = pm.ensure_venv(args.venv_dir, "torchserve", pm.TORCHSERVE_PACKAGES, pm.torch_site_packages())
        pts = {m: (pm.torchscript(m, folder / "ts" / f"{m}.pt"), SHAPES[m]) for m in models}
        configs = {
            "torchserve-default": {"workers": None},
            "torchserve-2w1t": {"workers": 2, "omp_threads": 1},
            "torchserve-batched": {"workers": 1, "batch_size": 8},
        }
        for variant, kw in tqdm(configs.items(), desc="torchserve"):
            server = pm.TorchServe(bin_dir, folder / variant, pts, **kw)
            drive(server, variant, {m: m for m in models}, ["torchserve"])


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    ceil = {(r["model"], r["concurrency"]): r for r in results["ceiling"]}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"command: python benchmarks/serving.py {' '.join(sys.argv[1:])}\n")
    print("In-process ceiling (same runtime and session settings, batch 1, best of 1 caller x all cores")
    print("and one caller per core x 1 thread, callers <= c):\n")
    print(
        table(
            ["model", "c", "inf/s", "CPU ms/inf", "session threads", "callers"],
            [
                [r["model"], r["concurrency"], r["rps"], r["cpu_ms_per_inf"], r["threads"], r["callers"]]
                for r in results["ceiling"]
            ],
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
    best: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in results["serving"]:
        key = (r["model"], r["concurrency"], "dlinfer" if r["variant"] in VARIANTS else r["variant"].split("-")[0])
        if r["rps"] > best.get(key, {}).get("rps", -1):
            best[key] = r
    families = sorted({k[2] for k in best} - {"dlinfer"})
    if families:
        print("\nBest of each server (any protocol and variant), and dlinfer's ratio to it:\n")
        rows = []
        for m, c in sorted({(k[0], k[1]) for k in best}):
            d = best.get((m, c, "dlinfer"))
            row: list[Any] = [m, c, f"{d['rps']:.0f} ({d['variant']}, {d['protocol']})" if d else "-"]
            for fam in families:
                o = best.get((m, c, fam))
                row.append(f"{o['rps']:.0f} ({o['variant']}, {o['protocol']})" if o else "-")
                row.append(f"{d['rps'] / o['rps']:.1f}x" if d and o and o["rps"] else "-")
            rows.append(row)
        header = ["model", "c", "dlinfer req/s"]
        for fam in families:
            header += [f"{fam} req/s", f"dlinfer / {fam}"]
        print(table(header, rows))
    if results["overload"]:
        print("\nOverload (open loop at 2x the capacity of `batched`, queue limit 16; latency of admitted")
        print("requests from the moment each was sent):\n")
        rows = []
        for r in results["overload"]:
            o = r["outcomes"]
            lost = sum(n for k, n in o.items() if k not in ("200", "429", "503", "client-limit"))
            rows.append(
                [
                    r["model"],
                    r["protocol"],
                    r["offered_rps"],
                    r["sent_rps"],
                    r["rps"],
                    o.get("429", 0) / args.duration,
                    o.get("client-limit", 0),
                    lost,
                    r["p50_ms"],
                    r["p99_ms"],
                ]
            )
        header = ["model", "protocol", "offered/s", "sent/s", "200/s", "429/s", "unsent", "lost", "p50 ms", "p99 ms"]
        print(table(header, rows))


if __name__ == "__main__":
    main()
