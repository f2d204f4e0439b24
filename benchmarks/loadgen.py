"""A load generator for V2 inference servers: closed loop (fixed concurrency) or open loop (fixed rate).

Usage (it is normally started by ``benchmarks/serving.py``, in its own process so
it never shares an interpreter with the server it measures)::

    python benchmarks/loadgen.py --url http://127.0.0.1:8000 --model mnv2 --shape 1,3,224,224 \\
        --protocol binary --concurrency 8 --duration 5 --warmup 1 [--rate 200] [--server-pid PID]

Prints one JSON object: requests per second, p50/p90/p99 latency (ms), counts by
status, and, with ``--server-pid``, the server's CPU milliseconds per answered
request over the measured window. Open-loop latency is measured from each
request's scheduled send time, so a stalled server is not hidden by a stalled client
(``--from-send`` measures from the actual send instead, when the client itself cannot
keep the schedule and only the server's share of the latency is wanted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson

#: V2 REST JSON, V2 REST binary tensors, V2 gRPC, and TorchServe's REST API with raw float32 bytes.
PROTOCOLS = ("json", "binary", "grpc", "torchserve")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants, from /proc (Linux).

    Descendants count because some servers run inference in worker processes
    (MLServer's parallel workers, TorchServe's Python workers under its JVM).
    """
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(_stat(int(entry))[1])
            except (OSError, IndexError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    total = 0
    for p in tree:
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime of the process itself
    return total / os.sysconf("SC_CLK_TCK")


def http_payload(protocol: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The request body and headers of one V2 REST request carrying ``x`` as input ``x``."""
    if protocol == "torchserve":
        return x.tobytes(), {"Content-Type": "application/octet-stream"}
    if protocol == "json":
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel()}]}
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), {"Content-Type": "application/json"}
    raw = x.tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": len(raw)}}
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


class Recorder:
    """Latencies and outcomes of the requests that finished inside the measured window."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.latencies: list[float] = []
        self.outcomes: Counter[str] = Counter()

    def add(self, sent: float, outcome: str) -> None:
        now = time.perf_counter()
        if self.start <= now <= self.end:
            self.outcomes[outcome] += 1
            if outcome == "200":
                self.latencies.append(now - sent)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    x = np.random.default_rng(0).standard_normal([int(d) for d in args.shape.split(",")]).astype(np.float32)
    send = await make_sender(args, x)
    t0 = time.perf_counter()
    rec = Recorder(t0 + args.warmup, t0 + args.warmup + args.duration)
    cpu0 = cpu1 = 0.0
    own0 = own1 = 0.0

    async def mark() -> None:
        nonlocal cpu0, cpu1, own0, own1
        await asyncio.sleep(max(rec.start - time.perf_counter(), 0))
        cpu0, own0 = (cpu_seconds(args.server_pid) if args.server_pid else 0.0), time.process_time()
        await asyncio.sleep(max(rec.end - time.perf_counter(), 0))
        cpu1, own1 = (cpu_seconds(args.server_pid) if args.server_pid else 0.0), time.process_time()

    marker = asyncio.create_task(mark())

    async def one(sent: float) -> None:
        try:
            rec.add(sent, await send())
        except Exception as exc:  # a lost request: connection reset, timeout, ...
            rec.add(sent, f"error:{type(exc).__name__}")

    sent = 0
    if args.rate:
        # Open loop: requests leave on schedule whatever the server does (bounded by --max-outstanding).
        tasks: set[asyncio.Task[None]] = set()
        interval = 1 / args.rate
        i = 0
        while (due := t0 + i * interval) < rec.end:
            await asyncio.sleep(max(due - time.perf_counter(), 0))
            if len(tasks) >= args.max_outstanding:
                rec.add(due, "client-limit")
            else:
                task = asyncio.create_task(one(time.perf_counter() if args.from_send else due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += rec.start <= time.perf_counter() <= rec.end
            i += 1
        await asyncio.gather(*tasks)
    else:

        async def worker() -> None:
            while time.perf_counter() < rec.end:
                await one(time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    await marker
    await send.close()  # type: ignore[attr-defined]
    lat = np.asarray(rec.latencies) * 1000
    ok = rec.outcomes.get("200", 0)
    return {
        "rps": ok / args.duration,
        "sent_rps": sent / args.duration if args.rate else None,
        "p50_ms": float(np.percentile(lat, 50)) if ok else None,
        "p90_ms": float(np.percentile(lat, 90)) if ok else None,
        "p99_ms": float(np.percentile(lat, 99)) if ok else None,
        "outcomes": dict(rec.outcomes),
        "server_cpu_ms_per_req": (cpu1 - cpu0) * 1000 / ok if ok and args.server_pid else None,
        "server_cpu_s": cpu1 - cpu0 if args.server_pid else None,
        "client_cpu_ms_per_req": (own1 - own0) * 1000 / ok if ok else None,
    }


async def make_sender(args: argparse.Namespace, x: np.ndarray) -> Any:
    """An async callable sending one request and returning its outcome ("200", "429", ...)."""
    if args.protocol == "grpc":
        import tritonclient.grpc.aio as grpcclient

        client = grpcclient.InferenceServerClient(args.url)
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)

        async def send_grpc() -> str:
            try:
                await client.infer(args.model, [inp], client_timeout=args.timeout)
                return "200"
            except grpcclient.InferenceServerException as exc:
                return str(exc.status())

        send_grpc.close = client.close  # type: ignore[attr-defined]
        return send_grpc

    import aiohttp

    body, headers = http_payload(args.protocol, x)
    # Uncompressed answers, as a load generator (and tritonclient) asks; aiohttp asks for gzip by default.
    headers = {**headers, "Accept-Encoding": "identity"}
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=args.timeout)
    )
    url = f"{args.url}/v2/models/{args.model}/infer"
    if args.protocol == "torchserve":
        url = f"{args.url}/predictions/{args.model}"

    async def send_http() -> str:
        async with session.post(url, data=body, headers=headers, expect100=args.expect) as resp:
            await resp.read()
            return str(resp.status)

    send_http.close = session.close  # type: ignore[attr-defined]
    return send_http


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="http://host:port, or host:port for --protocol grpc")
    p.add_argument("--model", required=True)
    p.add_argument("--shape", required=True, help="input shape, e.g. 1,3,224,224 (input 'x', FP32)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="json")
    p.add_argument("--concurrency", type=int, default=1, help="closed loop: requests in flight")
    p.add_argument("--rate", type=float, default=0, help="open loop: requests per second (overrides concurrency)")
    p.add_argument("--max-outstanding", type=int, default=2000, help="open loop: client-side cap")
    p.add_argument("--from-send", action="store_true", help="open loop: latency from the actual send time")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    p.add_argument("--expect", action="store_true", help="HTTP: send the body after the server's 100 Continue")
    p.add_argument("--server-pid", type=int, default=0, help="report this process's CPU per request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    try:  # the client's CPU comes out of the cores the server is measured on: spend as little as possible
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(run(parse_args(argv)))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
