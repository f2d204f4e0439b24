"""The in-process ceiling: the same runtime, same session settings, no server.

Loads the model with dlinfer-onnx's own loader (so thread and spinning settings
match what the server uses), then ``--concurrency`` Python threads call it on
batch-1 inputs as fast as they can. Prints JSON: inferences per second and CPU
milliseconds per inference. With ``--processes N`` it runs N such processes of
one thread each instead, to compare instance threads with instance processes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson


def load(model: Path, threads: int, instances: int):
    from dlinfer.config import node_config_from_dict
    from dlinfer.model import model_config_from_dict
    from dlinfer_onnx.loader import OnnxLoader

    node = node_config_from_dict({"threads": {"intra_op": threads}})
    return OnnxLoader(node).load(model_config_from_dict({"instance_count": instances}, "<bench>"), model.parent)


def measure(model: Path, shape: list[int], threads: int, concurrency: int, warmup: float, duration: float) -> dict:
    runner = load(model, threads, 1)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    start = time.perf_counter() + warmup
    end = start + duration
    counts = [0] * concurrency

    def loop(i: int) -> None:
        while (now := time.perf_counter()) < end:
            runner.predict({"x": x})
            if now >= start:
                counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    for w in workers:
        w.start()
    time.sleep(max(start - time.perf_counter(), 0))
    cpu0 = time.process_time()
    for w in workers:
        w.join()
    cpu = time.process_time() - cpu0
    n = sum(counts)
    return {"rps": n / duration, "cpu_ms_per_inf": cpu * 1000 / n if n else None}


def _child(args: tuple, out: mp.Queue) -> None:
    out.put(measure(*args))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="path of model.onnx")
    p.add_argument("--shape", required=True)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads of the session (0: all cores)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--processes", type=int, default=0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args()
    shape = [int(d) for d in a.shape.split(",")]
    if a.processes:
        q: mp.Queue = mp.get_context("spawn").Queue()
        procs = [
            mp.get_context("spawn").Process(
                target=_child, args=((a.model, shape, a.threads or 1, 1, a.warmup, a.duration), q)
            )
            for _ in range(a.processes)
        ]
        for pr in procs:
            pr.start()
        results = [q.get() for _ in procs]
        for pr in procs:
            pr.join()
        rps = sum(r["rps"] for r in results)
        cpu = sum(r["cpu_ms_per_inf"] * r["rps"] for r in results) / rps
        result = {"rps": rps, "cpu_ms_per_inf": cpu}
    else:
        result = measure(a.model, shape, a.threads, a.concurrency, a.warmup, a.duration)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
