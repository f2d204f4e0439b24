"""dlinfer-mkl: the fastest validated CPU variant vs. the framework's eager baseline, through the server.

    python benchmarks/mkl.py [--seconds 5] [--models resnet50_torch,resnet50_keras,mobilenetv2_torch,widedeep_torch]

For each model (random weights, nothing downloaded): ``dlinfer-core optimize`` tries the
full-precision variants in process and records the fastest one that passes the f32 gate
(1e-5 abs + 1e-5 rel against the model as loaded). Then one server serves, side by side,
the model as loaded (eager torch / Keras through dlinfer-tf), the recorded variant and,
for the CNNs, the opt-in bf16 (OpenVINO at bf16) and int8 (ONNX Runtime static quantisation)
variants, each only if its gate passes. Requests go one at a time
over HTTP with binary tensors (tritonclient) at batch 1 and 8, the variants of a model
taking turns so that load from other processes hits them alike. Prints images/s, speed-up
over the baseline, the server's CPU-ms per image (steadier than throughput on a shared
machine) and the largest difference from the baseline's outputs.

Then, with the server stopped (``benchmarks/mkl_reference.py``): Keras ResNet-50's speed-ups
against each TensorFlow baseline measured in process (eager calls, graph with oneDNN, graph
with stock kernels), and every CNN variant's GFLOP/s against the best rate OpenVINO reaches
on single ResNet-50 convolutions at that precision (how much room a faster variant has).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlinfer.testing import free_port

HERE = Path(__file__).resolve().parent
BATCHES = (1, 8)
MODELS = ("resnet50_torch", "resnet50_keras", "mobilenetv2_torch", "widedeep_torch")
IMAGE = {"max_batch_size": 8, "output": [{"name": "logits", "datatype": "FP32", "shape": [1000]}]}


def write_models(repo: Path, names: list[str]) -> None:
    """Each benchmark model as the server would find it in a repository."""
    import tomli_w

    for name in names:
        vdir = repo / name / "1"
        vdir.mkdir(parents=True)
        config: dict[str, Any]
        if name == "resnet50_keras":
            import keras

            keras.utils.set_random_seed(0)
            keras.applications.ResNet50(weights=None).save(vdir / "model.keras")
            config = {"max_batch_size": 8}
        else:
            import torch
            from mkl_models import MobileNetV2, ResNet50, WideDeep, randomized

            cls = {"resnet50_torch": ResNet50, "mobilenetv2_torch": MobileNetV2, "widedeep_torch": WideDeep}[name]
            torch.save(randomized(cls).state_dict(), vdir / "model.pt")
            config = {"format": "pytorch_state_dict", "parameters": {"model_class": f"mkl_models:{cls.__name__}"}}
            if cls is WideDeep:
                config["max_batch_size"] = 8
                config["input"] = [
                    {"name": "dense", "datatype": "FP32", "shape": [WideDeep.DENSE]},
                    {"name": "sparse", "datatype": "INT64", "shape": [WideDeep.SPARSE]},
                ]
                config["output"] = [{"name": "ctr", "datatype": "FP32", "shape": [1]}]
            else:
                config.update(IMAGE, input=[{"name": "image", "datatype": "FP32", "shape": [3, 224, 224]}])
        (repo / name / "config.toml").write_text(tomli_w.dumps(config))


def autotune(repo: Path, name: str, seconds: float, env: dict[str, str]) -> tuple[list[str], str]:
    """Run ``dlinfer-core optimize``; returns the recorded pipeline and the printed table."""
    import tomllib

    cmd = [sys.executable, "-m", "dlinfer.cli", "optimize", name, "--model-repository", str(repo)]
    done = subprocess.run(
        [*cmd, "--min-seconds", str(seconds), "--log-level", "warning"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"optimize {name} failed:\n{done.stderr[-3000:]}")
    pipeline = tomllib.loads((repo / name / "config.toml").read_text()).get("optimize", [])
    return list(pipeline), done.stdout


def add_variant(repo: Path, name: str, variant: str, pipeline: list[str], **keys: Any) -> str:
    """A copy of model ``name`` with another ``optimize`` list and other config ``keys``
    (the files are hard links)."""
    import tomllib

    import tomli_w

    target = f"{name}__{variant}"
    shutil.copytree(repo / name / "1", repo / target / "1", copy_function=os.link)
    config = tomllib.loads((repo / name / "config.toml").read_text())
    config.update(keys, optimize=pipeline)
    (repo / target / "config.toml").write_text(tomli_w.dumps(config))
    return target


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(fns: dict[str, Any], seconds: float, pid: int, rounds: int = 3) -> dict[str, tuple[float, float, float]]:
    """Per variant: (median latency s, calls/s, server CPU-s per call), each called back to back.

    The variants take turns (``rounds`` slices of ``seconds / rounds`` each) so that load
    from other processes on a shared machine drifts over all of them alike.
    """
    for fn in fns.values():
        fn()  # warm-up
    lat: dict[str, list[float]] = {k: [] for k in fns}
    busy = dict.fromkeys(fns, 0.0)
    cpu = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for k, fn in fns.items():
            c0, t0 = cpu_seconds(pid), time.perf_counter()
            while time.perf_counter() - t0 < seconds / rounds or not lat[k]:
                t = time.perf_counter()
                fn()
                lat[k].append(time.perf_counter() - t)
            busy[k] += time.perf_counter() - t0
            cpu[k] += cpu_seconds(pid) - c0
    return {k: (float(np.median(lat[k])), len(lat[k]) / busy[k], cpu[k] / len(lat[k])) for k in fns}


def inputs_for(meta: dict[str, Any], batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from dlinfer.datatypes import numpy_dtype

    out = {}
    for t in meta["inputs"]:
        shape = [batch, *(int(d) for d in t["shape"][1:])]
        dtype = numpy_dtype(t["datatype"])
        if dtype.kind == "f":
            out[t["name"]] = rng.standard_normal(shape).astype(dtype)
        else:  # categorical ids: any row of the embedding tables
            out[t["name"]] = rng.integers(0, 1000, shape).astype(dtype)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per variant and batch size")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="node threads.intra_op")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    sys.path.insert(0, str(HERE))
    import tritonclient.http as httpclient
    from servers import wait_models

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        write_models(repo, names)
        plans: dict[str, list[tuple[str, list[str]]]] = {}
        for name in names:
            print(f"autotuning {name} ...", file=sys.stderr, flush=True)
            best, table = autotune(repo, name, args.seconds / 2, env)
            print(f"\n`dlinfer-core optimize {name}` (in process):\n\n```\n{table.strip()}\n```\n", flush=True)
            plans[name] = [("eager", []), ("best", best)]
            if name != "widedeep_torch":
                plans[name] += [("bf16", ["openvino", "bf16"]), ("int8", ["int8"])]
            for variant, pipeline in plans[name]:
                add_variant(repo, name, variant, pipeline)
            shutil.rmtree(repo / name)
        node = Path(tmp) / "node.toml"
        node.write_text(f'[repository]\npath = "models"\n[threads]\nintra_op = {args.threads}\n')
        port = free_port()
        cmd = [sys.executable, "-m", "dlinfer.cli", "--config", str(node), "--port", str(port)]
        log = Path(tmp) / "server.log"
        with open(log, "w") as out:
            server = subprocess.Popen([*cmd, "--grpc-port", str(free_port())], env=env, stderr=out, stdout=out)
        rows = []
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=300)
            failed = wait_models(client, [f"{n}__{v}" for n in names for v, _ in plans[n]], server, log)
            for name in names:
                for variant, _ in list(plans[name]):
                    model = f"{name}__{variant}"
                    reason = failed.get(model) or _refused(client, model)
                    if not reason:
                        continue
                    if variant in ("eager", "best"):
                        raise SystemExit(f"{model} is not served as planned: {reason}")
                    print(f"\n{model} left out, not served as planned: {reason}", flush=True)
                    plans[name] = [(v, p) for v, p in plans[name] if v != variant]
            rng = np.random.default_rng(0)
            for name in names:
                meta = client.get_model_metadata(f"{name}__eager")
                out_name = meta["outputs"][0]["name"]
                for b in BATCHES:
                    feed = inputs_for(meta, b, rng)
                    reqs = []
                    for k, arr in feed.items():
                        inp = httpclient.InferInput(k, list(arr.shape), meta_type(meta, k))
                        inp.set_data_from_numpy(arr, binary_data=True)
                        reqs.append(inp)
                    outs = [httpclient.InferRequestedOutput(out_name, binary_data=True)]
                    models = {v: f"{name}__{v}" for v, _ in plans[name]}
                    got = {v: client.infer(m, reqs, outputs=outs).as_numpy(out_name) for v, m in models.items()}
                    base = got["eager"].astype(np.float64)
                    calls = {v: (lambda m=m, r=reqs, o=outs: client.infer(m, r, outputs=o)) for v, m in models.items()}
                    timed = measure(calls, args.seconds, server.pid)
                    for variant, pipeline in plans[name]:
                        lat, per_s, cpu_s = timed[variant]
                        diff = np.abs(got[variant] - base)
                        rows.append(
                            (name, variant, "+".join(pipeline) or "-", b, lat * 1e3, per_s * b, cpu_s * 1e3 / b,
                             diff.max(), diff.max() / np.abs(base).max())
                        )  # fmt: skip
                        print(f"{name}__{variant} b{b}: {lat * 1e3:.1f} ms", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait(60)
    _report(rows, args)
    _report_reference(rows, names, args)


def meta_type(meta: dict[str, Any], name: str) -> str:
    return next(t["datatype"] for t in meta["inputs"] if t["name"] == name)


def _refused(client: Any, model: str) -> str:
    """Why a step of the model's pipeline was not applied (the gate refused it), or ''."""
    steps = client.get_model_config(model)["optimized"]
    return "; ".join(f"{s['optimizer']}: {s['reason']}" for s in steps if not s["applied"])


def _report(rows: list[tuple], args: argparse.Namespace) -> None:
    import onnxruntime
    import openvino
    import torch

    print(
        f"\n{os.cpu_count()} CPUs, node threads.intra_op = {args.threads}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}; sequential requests, "
        f"{args.seconds:g} s per cell in 3 interleaved slices\n"
    )
    print(
        "| model | variant | pipeline | batch | latency ms | images/s | speed-up | server CPU-ms/image "
        "| max abs diff | max diff / output scale |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base: dict[tuple[str, int], float] = {}
    for name, variant, pipeline, b, lat, ips, cpu, abs_err, rel_err in rows:
        base.setdefault((name, b), ips)
        print(
            f"| {name} | {variant} | {pipeline} | {b} | {lat:.1f} | {ips:.1f} | {ips / base[(name, b)]:.2f}x "
            f"| {cpu:.1f} | {abs_err:.1e} | {rel_err:.1e} |"
        )


def _report_reference(rows: list[tuple], names: list[str], args: argparse.Namespace) -> None:
    """Keras baselines and compute rates against the CPU's convolution ceiling (server stopped)."""
    import mkl_reference as ref

    served = {(name, variant, b): ips for name, variant, _, b, _, ips, *_ in rows}
    if "resnet50_keras" in names:
        variants = [v for v in ("best", "bf16", "int8") if ("resnet50_keras", v, BATCHES[0]) in served]
        print("\nresnet50_keras, speed-up of the served variants over TensorFlow run in process:\n")
        heads = " | ".join(f"{v} b{b}" for v in variants for b in BATCHES)
        print(f"| baseline | rows/s b1 | rows/s b8 | {heads} |")
        print("| --- " * (3 + len(variants) * len(BATCHES)) + "|")
        for label, mode, stock in (
            ("Keras eager call `model(x)`", "eager", False),
            ("graph, oneDNN kernels (TF default; what dlinfer-tf serves)", "graph", False),
            ("graph, stock kernels (`TF_ENABLE_ONEDNN_OPTS=0`)", "graph", True),
        ):
            base = ref.keras_baseline(mode, stock, BATCHES, args.seconds / 2, args.threads)
            ups = [served[("resnet50_keras", v, b)] / base[b] for v in variants for b in BATCHES]
            cells = " | ".join(f"{u:.2f}x" for u in ups)
            print(f"| {label} | {base[1]:.1f} | {base[8]:.1f} | {cells} |", flush=True)
    cnns = [n for n in names if n.startswith("resnet50")]  # conv-bound: the ceiling applies
    if not cnns:
        return
    ceiling = ref.conv_ceiling(args.threads)
    print(
        f"\nCompute rate through the server; ceiling = OpenVINO's best single ResNet-50 3x3 convolution "
        f"(batch 8): f32 {ceiling['f32']:.0f} GFLOP/s, bf16 {ceiling['bf16']:.0f} GFLOP/s\n"
    )
    print("| model | GFLOP/image | variant | batch | GFLOP/s | % of ceiling |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in cnns:
        gflops = ref.model_gflops(name)
        for (model, variant, b), ips in served.items():
            if model == name:
                rate = ips * gflops  # int8: the f32 model's operations per second; no int8 ceiling measured
                share = "-" if variant == "int8" else f"{100 * rate / ceiling.get(variant, ceiling['f32']):.0f}%"
                print(f"| {name} | {gflops:.2f} | {variant} | {b} | {rate:.0f} | {share} |")


if __name__ == "__main__":
    main()
