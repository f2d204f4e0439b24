"""The floor of any Python serving stack: a bare aiohttp + ONNX Runtime server, no scheduler.

Usage::

    python benchmarks/bare_server.py --model model.onnx --port 8500 [--sessions 2] [--threads 1]

It answers ``POST /v2/models/{name}/infer`` with V2 binary tensors only (one FP32
input, outputs as binary tensors), runs each request on one of ``--sessions``
ONNX Runtime sessions in a thread pool, and checks nothing. ``serving.py`` runs
it beside dlinfer so the table shows what the HTTP round trip alone costs on the
same machine, and how much of the gap to in-process is dlinfer's own.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import orjson
from aiohttp import web


def make_app(model: str, sessions: int, threads: int) -> web.Application:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    pool: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
    for _ in range(sessions):
        pool.put(ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]))
    executor = ThreadPoolExecutor(sessions)

    def run(feed: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        sess = pool.get()
        try:
            names = [o.name for o in sess.get_outputs()]
            return list(zip(names, sess.run(names, feed), strict=True))
        finally:
            pool.put(sess)

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        n = int(request.headers["Inference-Header-Content-Length"])
        header = orjson.loads(body[:n])
        inp = header["inputs"][0]
        x = np.frombuffer(body, np.float32, offset=n).reshape(inp["shape"])
        outputs = await asyncio.get_running_loop().run_in_executor(executor, run, {inp["name"]: x})
        meta = [
            {"name": k, "datatype": "FP32", "shape": list(v.shape), "parameters": {"binary_data_size": v.nbytes}}
            for k, v in outputs
        ]
        head = orjson.dumps({"model_name": request.match_info["name"], "outputs": meta})
        return web.Response(
            body=b"".join([head, *(v.tobytes() for _, v in outputs)]),
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
        )

    async def ready(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    web.run_app(make_app(args.model, args.sessions, args.threads), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
