"""Caffe models: dlinfer-caffe (converted to ONNX, ONNX Runtime) against OpenCV DNN on the same files.

Usage: python benchmarks/caffe.py [--rounds 3] [--iters 10] [--batches 1 8] [--threads 2]

Whole AlexNet, ResNet-50 and MobileNet v1 deploy networks (dlinfer_caffe.testing, random
weights) are written as real Caffe files, converted the way the node converts them on load,
and run in-process by both runtimes with the same thread count, in alternating rounds.
Reports the load time (read + convert + session), per-batch latency (median of the best
round) and the largest difference of the probabilities, relative to their scale.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dlinfer_caffe.converter import convert_files
from dlinfer_caffe.testing import alexnet, mobilenet, resnet
from dlinfer_caffe.writer import write_caffe_model

NETS = {
    "AlexNet": (lambda: alexnet(1), 227),
    "ResNet-50": (lambda: resnet(1, (3, 4, 6, 3)), 224),
    "MobileNet v1": (lambda: mobilenet(1, 13), 224),
}


def median_ms(fn, iters: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import cv2
    import onnxruntime as ort

    cv2.setNumThreads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (make, size) in tqdm(NETS.items(), desc="networks", unit="net"):
            folder = Path(tmp) / name.replace(" ", "_")
            weights = write_caffe_model(folder, make())
            params = sum(a.size for blobs in weights.values() for a in blobs) / 1e6
            prototxt, caffemodel = folder / "deploy.prototxt", folder / "model.caffemodel"

            t0 = time.perf_counter()
            model = convert_files(prototxt, caffemodel)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            load_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
            load_cv = time.perf_counter() - t0

            for batch in args.batches:
                x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)

                def ours(x=x, session=session):  # type: ignore[no-untyped-def]
                    return session.run(["prob"], {"data": x})[0]

                def theirs(x=x, net=net):  # type: ignore[no-untyped-def]
                    net.setInput(x)
                    return net.forward("prob")

                best_ours, best_cv = [], []
                for _ in range(args.rounds):  # alternate so that machine load hits both alike
                    best_ours.append(median_ms(ours, args.iters))
                    best_cv.append(median_ms(theirs, args.iters))
                a, b = ours(), theirs().reshape(ours().shape)
                err = float(np.abs(a - b).max() / np.abs(b).max())
                rows.append((name, params, load_ours, load_cv, batch, min(best_ours), min(best_cv), err))

    print(
        "| network | params M | load s dlinfer | load s OpenCV | batch | dlinfer ms | OpenCV ms "
        "| OpenCV / dlinfer | max rel diff |"
    )
    print("|" + " --- |" * 9)
    for name, params, lo, lc, batch, mo, mc, err in rows:
        cells = [name, f"{params:.1f}", f"{lo:.2f}", f"{lc:.2f}", batch, f"{mo:.1f}", f"{mc:.1f}", f"{mc / mo:.2f}x"]
        print("| " + " | ".join(map(str, [*cells, f"{err:.1e}"])) + " |")


if __name__ == "__main__":
    main()
