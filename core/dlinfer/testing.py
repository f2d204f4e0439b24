"""Helpers for testing dlinfer and its plugins against a real server.

- :func:`free_port` — a TCP port nobody listens on.
- :class:`RunningNode` — a real node on a real port, in a background thread.
- :func:`write_model` — put a model version into a repository folder.
- :func:`onnx_linear_model` and friends — tiny real ONNX models built with ``onnx.helper``.
- :class:`V2Client` — a small V2 JSON client.
- :func:`plugin_distribution` — an installed-looking distribution with entry points.

The pytest fixtures built on these live in :mod:`dlinfer.pytest_plugin`, which
pytest loads automatically wherever dlinfer is installed.

Plugin authors use these from their own tests; ``dlinfer.testing`` imports no
framework at module top.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import NodeConfig, node_config_from_dict
from .plugins import Plugins


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports nobody listens on (all held open while choosing, so
    the kernel cannot hand out the same port twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(
    check: Callable[[], object], what: str = "condition", timeout_s: float = 30.0, interval_s: float = 0.01
) -> None:
    """Poll ``check`` until it returns something true; after ``timeout_s`` fail naming ``what``."""
    until = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def metric_value(url: str, name: str, model: str, version: str = "1", **labels: str) -> float:
    """One sample of a node's ``/metrics`` for a model version (0 when the series does not exist yet)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    want = {"model": model, "version": version, **labels}
    with urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == want:
                return sample.value
    return 0.0


def node_config(repository: Path, /, **tables: dict[str, Any]) -> NodeConfig:
    """A NodeConfig for tests: the given repository, free ports, 1 thread, plus ``tables``
    (e.g. ``limits={"max_body_bytes": 4096}``) merged over those defaults."""
    data: dict[str, Any] = {
        "server": dict(zip(("http_port", "grpc_port"), free_ports(2), strict=True), host="127.0.0.1"),
        "repository": {"path": str(repository)},
        "threads": {"intra_op": 1},
    }
    for key, value in tables.items():
        data.setdefault(key, {}).update(value)
    return node_config_from_dict(data, source="<test>", base_dir=str(repository))


class RunningNode:
    """Serve ``config`` on its real port from a background thread.

    Use as a context manager; ``url`` is the HTTP base address. ``plugins`` lets
    a test register extra plugin objects before the node starts.
    """

    def __init__(self, config: NodeConfig, plugins: Plugins | None = None, timeout_s: float = 60) -> None:
        self.config = config
        self.plugins = plugins
        self.timeout_s = timeout_s
        scheme = "https" if config.server.tls.cert_file else "http"
        self.url = f"{scheme}://{config.server.host}:{config.server.http_port}"
        self.app: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> RunningNode:
        self._thread = threading.Thread(target=self._main, name="dlinfer-test-node", daemon=True)
        self._thread.start()
        if not self._started.wait(self.timeout_s):
            raise TimeoutError("node did not start in time")
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(self.timeout_s)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run a coroutine factory on the node's loop and wait for the result."""
        assert self._loop
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(self.timeout_s)

    def _main(self) -> None:
        from .server.loop import run

        run(self._serve(), self.config.server.event_loop)

    async def _serve(self) -> None:
        from .server import create_app
        from .server.app import start_http

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.app = create_app(self.config, self.plugins)
            runner = await start_http(self.app)
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


class V2Client:
    """A minimal synchronous V2 JSON client (stdlib only) for tests and examples.

    ``infer`` returns outputs as numpy arrays; a non-2xx answer raises
    :class:`V2Error` carrying the status and the server's error message.
    """

    def __init__(self, url: str, timeout_s: float = 30) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None) -> Any:
        import urllib.error
        import urllib.request

        import orjson

        data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY) if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = orjson.loads(raw).get("error", raw.decode(errors="replace"))
            except (orjson.JSONDecodeError, AttributeError):
                message = raw.decode(errors="replace")
            raise V2Error(exc.code, message) from None
        return orjson.loads(raw) if raw else None

    def ready(self, model: str | None = None) -> bool:
        try:
            self.request("GET", f"/v2/models/{model}/ready" if model else "/v2/health/ready")
        except (V2Error, OSError):
            return False
        return True

    def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        return self.request("GET", f"/v2/models/{model}" + (f"/versions/{version}" if version else ""))

    def infer(self, model: str, inputs: dict[str, np.ndarray], version: str | None = None) -> dict[str, np.ndarray]:
        from .datatypes import v2_datatype

        body = {
            "inputs": [
                {
                    "name": name,
                    "datatype": v2_datatype(arr.dtype),
                    "shape": list(arr.shape),
                    "data": arr.ravel().tolist() if arr.dtype.kind in "OSU" else np.ascontiguousarray(arr).ravel(),
                }
                for name, arr in inputs.items()
            ]
        }
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        doc = self.request("POST", path, body)
        return {o["name"]: _output_array(o) for o in doc["outputs"]}


class V2Error(Exception):
    """A V2 server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _output_array(out: dict[str, Any]) -> np.ndarray:
    from .datatypes import numpy_dtype

    if out["datatype"] == "BYTES":
        return np.array([s.encode() for s in out["data"]], dtype=object).reshape(out["shape"])
    return np.asarray(out["data"], dtype=numpy_dtype(out["datatype"])).reshape(out["shape"])


def write_model(
    repository: Path,
    name: str,
    version: int = 1,
    files: dict[str, bytes] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Create ``repository/name/version/`` with ``files`` and an optional config.toml."""
    import tomli_w

    mdir = repository / name
    vdir = mdir / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    for fname, content in (files or {}).items():
        (vdir / fname).write_bytes(content)
    if config is not None:
        (mdir / "config.toml").write_text(tomli_w.dumps(config))
    return vdir


def onnx_linear_model(in_features: int = 4, out_features: int = 3, seed: int = 0, batch: int | str = "batch") -> bytes:
    """``y = softmax(x @ W + b)`` with input ``x`` [batch, in] FP32 and outputs
    ``logits`` and ``probs`` [batch, out]: a tiny real classifier."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((in_features, out_features)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, out_features]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, out_features]),
        ],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return _serialize(graph)


def onnx_identity_model(datatype: str, shape: list[int | str] | None = None) -> bytes:
    """``y = Identity(x)`` for one V2 datatype: round-trips every dtype exactly."""
    from onnx import TensorProto, helper

    elem = {
        "BOOL": TensorProto.BOOL,
        "INT8": TensorProto.INT8,
        "INT16": TensorProto.INT16,
        "INT32": TensorProto.INT32,
        "INT64": TensorProto.INT64,
        "UINT8": TensorProto.UINT8,
        "UINT16": TensorProto.UINT16,
        "UINT32": TensorProto.UINT32,
        "UINT64": TensorProto.UINT64,
        "FP16": TensorProto.FLOAT16,
        "FP32": TensorProto.FLOAT,
        "FP64": TensorProto.DOUBLE,
        "BYTES": TensorProto.STRING,
    }[datatype]
    dims = shape or ["batch", 3]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, dims)],
        [helper.make_tensor_value_info("y", elem, dims)],
    )
    return _serialize(graph)


def onnx_slow_model(seed: int = 0, layers: int = 60, width: int = 512) -> bytes:
    """``y = tanh(...tanh(x @ W)... @ W)`` on ``x`` [n, width] FP32: a model whose
    requests take a while (a few thousand rows: about a second on one core), for
    tests of deadlines, draining and reloads with requests in flight."""
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(seed).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(layers):
        nodes += [helper.make_node("MatMul", [prev, "W"], [f"m{i}"]), helper.make_node("Tanh", [f"m{i}"], [f"t{i}"])]
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    return _serialize(graph)


def write_identity_models(repository: Path, datatypes: list[str]) -> None:
    """One identity model per datatype, named ``id_<datatype>`` (e.g. ``id_fp32``), version 1."""
    for dt in datatypes:
        write_model(repository, f"id_{dt.lower()}", 1, {"model.onnx": onnx_identity_model(dt)})


def _serialize(graph: Any) -> bytes:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every ONNX Runtime from 1.10 on
    onnx.checker.check_model(model)
    return model.SerializeToString()


def plugin_distribution(
    site_dir: Path,
    name: str,
    entry_points: dict[str, str],
    modules: dict[str, str] | None = None,
    version: str = "0.0.1",
) -> Path:
    """Install a minimal distribution into ``site_dir``: a ``.dist-info`` folder
    with ``METADATA`` and ``entry_points.txt`` plus the given module sources.

    Put ``site_dir`` on ``sys.path`` (or ``PYTHONPATH`` for a subprocess) and
    ``importlib.metadata`` finds it exactly like a pip-installed package.
    """
    site_dir.mkdir(parents=True, exist_ok=True)
    info = site_dir / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[dlinfer.plugins]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for modname, source in (modules or {}).items():
        (site_dir / f"{modname}.py").write_text(source)
    return info
