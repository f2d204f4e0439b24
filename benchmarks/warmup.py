"""Model warm-up: the first requests to a freshly loaded version, with and without ``warmup``.

    python benchmarks/warmup.py [--rounds 3] [--models resnet50_keras,resnet50_torch]

Each model (random weights, from ``benchmarks/mkl.py``) is served twice by one server,
as loaded (``warmup = 0``) and with ``warmup = 1``, plus, for the torch model, the same
two under ``optimize = ["openvino"]``. Right after the server is ready, each copy gets
five batch-1 requests, one at a time (HTTP, binary tensors); the latency of the first,
the second and the median of the last three are printed. A fresh server per round
(the cold state exists once per load), medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dlinfer.testing import free_port

HERE = Path(__file__).resolve().parent
REQUESTS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="resnet50_keras,resnet50_torch")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import tritonclient.http as httpclient
    from mkl import add_variant, write_models
    from servers import wait_models

    names = [n for n in args.models.split(",") if n]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    times: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        write_models(repo, names)
        models = []
        for name in names:
            pipelines = [[]] + ([["openvino"]] if name.startswith("resnet50_torch") else [])
            for pipeline in pipelines:
                tag = "+".join(pipeline) or "as-loaded"
                models += [add_variant(repo, name, f"{tag}__cold", pipeline, warmup=0)]
                models += [add_variant(repo, name, f"{tag}__warm", pipeline, warmup=1)]
        node = Path(tmp) / "node.toml"
        node.write_text(f'[repository]\npath = "models"\n[threads]\nintra_op = {os.cpu_count() or 1}\n')
        for r in range(args.rounds):
            port, log = free_port(), Path(tmp) / f"server-{r}.log"
            cmd = [sys.executable, "-m", "dlinfer.cli", "--config", str(node), "--port", str(port)]
            with open(log, "w") as out:
                server = subprocess.Popen([*cmd, "--grpc-port", str(free_port())], env=env, stdout=out, stderr=out)
            try:
                client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=300)
                failed = wait_models(client, models, server, log)
                if failed:
                    raise SystemExit(f"models did not load: {failed}")
                for m in models:
                    meta = client.get_model_metadata(m)
                    spec = meta["inputs"][0]
                    shape = [1, *(int(d) for d in spec["shape"][1:])]
                    inp = httpclient.InferInput(spec["name"], shape, spec["datatype"])
                    inp.set_data_from_numpy(np.random.default_rng(r).standard_normal(shape, dtype=np.float32))
                    lat = []
                    for _ in range(REQUESTS):
                        start = time.perf_counter()
                        client.infer(m, [inp])
                        lat.append((time.perf_counter() - start) * 1e3)
                    times.setdefault(m, []).append(lat)
                    print(f"round {r + 1} {m}: " + " ".join(f"{t:.0f}" for t in lat) + " ms", file=sys.stderr)
            finally:
                server.terminate()
                server.wait(60)
    print(f"\n{os.cpu_count()} CPUs, {args.rounds} rounds (a fresh server each), batch-1 requests one at a time\n")
    print("| model | optimize | warmup | 1st request ms | 2nd ms | median of 3rd-5th ms | 1st / steady |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m, rounds in times.items():
        name, tag, mode = m.split("__")
        first, second = (float(np.median([lat[i] for lat in rounds])) for i in (0, 1))
        steady = float(np.median([np.median(lat[2:]) for lat in rounds]))
        warm = "1" if mode == "warm" else "0"
        print(f"| {name} | {tag} | {warm} | {first:.1f} | {second:.1f} | {steady:.1f} | {first / steady:.1f}x |")


if __name__ == "__main__":
    main()
