"""TensorFlow model behind each frontend: V2 (JSON and binary HTTP, gRPC) and TF-Serving (REST row and
columnar JSON, gRPC), side by side, against TensorFlow in-process; and oneDNN on vs off.

Builds a MobileNetV2 SavedModel (random weights, 224x224x3 input) in a temporary repository,
serves it with ``dlinfer-core`` (tf plugin only) in its own process, and runs closed-loop clients
(real tritonclient and tensorflow-serving-api clients, requests for REST) for ``--seconds`` per
cell. Prints one table: requests/s, median and p99 latency, the server's CPU milliseconds per
request (the steady figure on a shared machine) as a multiple of the CPU milliseconds of one call
in-process (the same TensorFlow runner, called directly), and requests/s against the in-process
rate. A second table compares in-process rates with ``TF_ENABLE_ONEDNN_OPTS`` 1 and 0::

    python benchmarks/tf_frontends.py --seconds 5 --concurrency 1 4
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import requests
from protocols import closed_loop, progress
from protocols import start_server as start_protocol_server

MODEL = "mnv2"
FRONTENDS = ("v2-json", "v2-binary", "v2-grpc", "tfs-rest-row", "tfs-rest-columnar", "tfs-grpc")


def build_model(folder: Path) -> None:
    """A MobileNetV2 SavedModel with signature ``serving_default``: image -> probs."""
    import keras
    import tensorflow as tf

    net = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))

    class Serving(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
        def serve(self, image: Any) -> dict[str, Any]:
            return {"probs": self.net(image, training=False)}

    module = Serving()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})


IN_PROCESS = """
import sys, time
from pathlib import Path
import numpy as np
from dlinfer.config import NodeConfig
from dlinfer.model import ModelConfig
from dlinfer_tf.loader import SavedModelLoader

runner = SavedModelLoader(NodeConfig()).load(ModelConfig(), Path(sys.argv[1]))
x = np.random.default_rng(0).standard_normal((int(sys.argv[3]), 224, 224, 3)).astype(np.float32)
for _ in range(3):
    runner.predict({"image": x})
n, end, cpu0 = 0, time.monotonic() + float(sys.argv[2]), time.process_time()
while time.monotonic() < end:
    runner.predict({"image": x})
    n += 1
print(n / float(sys.argv[2]), (time.process_time() - cpu0) * 1000 / n)
"""


def in_process_rate(folder: Path, seconds: float, batch: int, onednn: str) -> tuple[float, float]:
    """Calls/s and CPU ms per call of the served runner in a fresh process (oneDNN is
    fixed when TensorFlow is imported)."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(folder), str(seconds), str(batch)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rate, cpu_ms = out.stdout.split()[-2:]
    return float(rate), float(cpu_ms)


def make_call(frontend: str, http_port: int, grpc_port: int, x: np.ndarray) -> Callable[[], None]:
    """A function that sends one request and checks the answer's shape."""
    if frontend.startswith("v2-"):
        if frontend == "v2-grpc":
            import tritonclient.grpc as client_lib

            client: Any = client_lib.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            inp = client_lib.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            out = client_lib.InferRequestedOutput("probs")
        else:
            import tritonclient.http as client_lib

            binary = frontend == "v2-binary"
            client = client_lib.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=120)
            inp = client_lib.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = client_lib.InferRequestedOutput("probs", binary_data=binary)

        def v2() -> None:
            assert client.infer(MODEL, [inp], outputs=[out]).as_numpy("probs").shape == (x.shape[0], 1000)

        return v2
    if frontend == "tfs-grpc":
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        channel = grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def tfs_grpc() -> None:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = MODEL
            req.inputs["image"].CopyFrom(tf.make_tensor_proto(x))
            assert tf.make_ndarray(stub.Predict(req, timeout=120).outputs["probs"]).shape == (x.shape[0], 1000)

        return tfs_grpc
    session = requests.Session()
    url = f"http://127.0.0.1:{http_port}/v1/models/{MODEL}:predict"
    key = "instances" if frontend == "tfs-rest-row" else "inputs"

    def tfs_rest() -> None:
        # Encoding is part of a REST client's cost, as it is for any TF-Serving REST client.
        body = orjson.dumps({key: x}, option=orjson.OPT_SERIALIZE_NUMPY)
        r = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=120)
        r.raise_for_status()
        doc = orjson.loads(r.content)
        assert len(doc["predictions" if key == "instances" else "outputs"]) == x.shape[0]

    return tfs_rest


def run_cell(frontend: str, concurrency: int, seconds: float, ports: tuple[int, int], pid: int, x: np.ndarray) -> dict:
    return closed_loop(lambda: make_call(frontend, *ports, x), concurrency, seconds, pid)


def start_server(root: Path) -> tuple[subprocess.Popen, int, int]:
    return start_protocol_server(root, "tf", f"/v2/models/{MODEL}/ready", 120, TF_CPP_MIN_LOG_LEVEL="2")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build:
        build_model(args.build)
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        folder = root / MODEL / "1"
        # Built in a child process: TensorFlow stays out of this one until the clients need it.
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        subprocess.run([sys.executable, __file__, "--build", str(folder)], env=env, check=True)
        onednn = {
            (flag, batch): in_process_rate(folder, args.seconds, batch, flag) for flag in ("1", "0") for batch in (1, 8)
        }
        x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
        proc, http_port, grpc_port = start_server(root)
        cells = [(c, f) for c in args.concurrency for f in FRONTENDS]
        results = {}
        try:
            for c, f in progress(cells, "benchmarking"):
                results[c, f] = run_cell(f, c, args.seconds, (http_port, grpc_port), proc.pid, x)
        finally:
            proc.terminate()
            proc.wait(60)

    ceiling, ceiling_cpu = onednn["1", 1]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.seconds:g} s per cell")
    print(
        f"MobileNetV2 SavedModel, batch 1; in-process (oneDNN on): {ceiling:.1f} calls/s, "
        f"{ceiling_cpu:.1f} CPU ms/call\n"
    )
    print("| conc | frontend | req/s | p50 ms | p99 ms | server CPU ms/req | CPU vs in-process | req/s vs in-process |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for c, f in cells:
        r = results[c, f]
        print(
            f"| {c} | {f} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['cpu_ms']:.1f} "
            f"| {r['cpu_ms'] / ceiling_cpu:.2f}x | {100 * r['rps'] / ceiling:.0f}% |"
        )
    print("\n| batch | oneDNN on: calls/s | CPU ms/call | oneDNN off: calls/s | CPU ms/call | on / off (CPU ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch in (1, 8):
        (on, on_cpu), (off, off_cpu) = onednn["1", batch], onednn["0", batch]
        print(f"| {batch} | {on:.1f} | {on_cpu:.1f} | {off:.1f} | {off_cpu:.1f} | {off_cpu / on_cpu:.2f}x |")


if __name__ == "__main__":
    main()
