"""ResNet-50 (torchvision's architecture, random weights) served by dlinfer-torch vs. in-process eager PyTorch.

    python benchmarks/torch_resnet50.py [--threads 2] [--seconds 10]

Saves the weights as a state_dict, serves them with ``parameters.model_class`` naming the
class below (so the server runs the same eager module), and measures, one after the other
so they never compete for cores, in alternating rounds: the in-process eager module, then
the server over HTTP with binary tensors (tritonclient), at batch 1 and 8. Prints latency,
images/s, CPU-ms per image and dlinfer as a percentage of in-process (best of the rounds).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlinfer.testing import free_port

HERE = Path(__file__).resolve().parent
BATCHES = (1, 8)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet50(nn.Module):
    """torchvision's resnet50 layout: 3-4-6-3 bottlenecks, 25.6 M parameters."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * Bottleneck.expansion
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def measure(fn, seconds: float, batch: int) -> tuple[float, float, int]:
    """(median latency ms, images/s, calls) of ``fn`` called back to back for ``seconds`` after 2 warm-ups."""
    fn()
    fn()
    lat = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(lat) < 3:
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return float(np.median(lat) * 1e3), len(lat) * batch / wall, len(lat)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(tmp: Path, model: nn.Module, threads: int) -> tuple[subprocess.Popen, object]:
    """A dlinfer node in its own process serving ``model``'s state_dict; returns it and a ready client."""
    import tritonclient.http as httpclient

    vdir = tmp / "models" / "resnet50" / "1"
    vdir.mkdir(parents=True)
    torch.save(model.state_dict(), vdir / "model.pt")
    (vdir.parent / "config.toml").write_text(
        "max_batch_size = 8\n"
        '[[input]]\nname = "image"\ndatatype = "FP32"\nshape = [3, 224, 224]\n'
        '[[output]]\nname = "logits"\ndatatype = "FP32"\nshape = [1000]\n'
        '[parameters]\nmodel_class = "torch_resnet50:ResNet50"\n'
    )
    node = tmp / "node.toml"
    node.write_text(f'[repository]\npath = "models"\n[threads]\nintra_op = {threads}\n')
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "dlinfer.cli", "--config", str(node), "--port", str(port)]
    server = subprocess.Popen(
        [*cmd, "--grpc-port", str(free_port()), "--log-level", "warning"], env=env, stderr=subprocess.PIPE
    )
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.is_model_ready("resnet50"):
                return server, client
        except Exception:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit(f"server did not get ready: {server.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per variant, batch and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternate in-process and server this many times")
    args = parser.parse_args()

    import tritonclient.http as httpclient

    torch.manual_seed(0)
    model = ResNet50().eval()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in BATCHES}
    best: dict[tuple[str, int], tuple[float, float, float]] = {}  # (variant, batch) -> (ms, img/s, CPU-ms/img)
    errors = {}

    def keep(key: tuple[str, int], result: tuple[float, float, int], cpu_s: float, batch: int) -> None:
        ms, ips, calls = result
        row = (ms, ips, cpu_s * 1e3 / ((calls + 2) * batch))
        if key not in best or row[1] > best[key][1]:
            best[key] = row
        print(f"{key[0]:>10} batch {batch}: {ms:7.1f} ms {ips:6.1f} img/s {row[2]:5.0f} CPU-ms/img", flush=True)

    # In-process calls run on a worker thread, as the server runs them: on this VM the main
    # thread's OpenMP team ran several times slower than a worker thread's under load.
    worker = ThreadPoolExecutor(1)
    with tempfile.TemporaryDirectory() as tmp:
        server, client = start_server(Path(tmp), model, args.threads)
        try:
            for _ in range(args.rounds):
                for b in BATCHES:
                    x = torch.from_numpy(inputs[b])

                    def run_local(x: torch.Tensor = x) -> None:
                        with torch.inference_mode():
                            model(x)

                    c0 = time.process_time()
                    res = worker.submit(measure, run_local, args.seconds, b).result()
                    keep(("in-process", b), res, time.process_time() - c0, b)

                    inp = httpclient.InferInput("image", [b, 3, 224, 224], "FP32")
                    inp.set_data_from_numpy(inputs[b], binary_data=True)
                    out = [httpclient.InferRequestedOutput("logits", binary_data=True)]
                    if b not in errors:
                        got = client.infer("resnet50", [inp], outputs=out).as_numpy("logits")
                        with torch.inference_mode():
                            errors[b] = float(np.abs(got - model(x).numpy()).max())

                    def run_server(inp=inp, out=out) -> None:
                        client.infer("resnet50", [inp], outputs=out)

                    c0 = cpu_seconds(server.pid)
                    res = measure(run_server, args.seconds, b)
                    keep(("dlinfer", b), res, cpu_seconds(server.pid) - c0, b)
        finally:
            server.terminate()
            server.wait(30)

    print(
        f"\nResNet-50 f32 eager, {args.threads} torch threads, torch {torch.__version__}, one request at a time, "
        f"best of {args.rounds} rounds\n"
    )
    print(
        "| batch | in-process ms | in-process img/s | dlinfer ms | dlinfer img/s | dlinfer / in-process "
        "| CPU-ms/img in-process | CPU-ms/img dlinfer | max abs diff |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in BATCHES:
        loc, srv = best[("in-process", b)], best[("dlinfer", b)]
        print(
            f"| {b} | {loc[0]:.1f} | {loc[1]:.1f} | {srv[0]:.1f} | {srv[1]:.1f} | {100 * srv[1] / loc[1]:.0f}% "
            f"| {loc[2]:.0f} | {srv[2]:.0f} | {errors[b]:.1e} |"
        )


if __name__ == "__main__":
    main()
