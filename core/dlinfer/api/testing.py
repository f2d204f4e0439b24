"""Test helpers for plugin tests: a real node on a free port, tiny models, a V2 client.

Part of the stable plugin API (see :mod:`dlinfer.api`); the pytest fixtures built on
these (``dlinfer_repository``, ``dlinfer_server``) load automatically wherever
dlinfer is installed.

- ``RunningNode`` — serve a :class:`~dlinfer.api.NodeConfig` on its real ports from a background thread.
- ``node_config`` — a node config for tests: a repository, free ports, one thread, extra tables.
- ``write_model`` — put a model version (files and an optional config.toml) into a repository.
- ``write_identity_models`` — one identity ONNX model per V2 datatype.
- ``onnx_linear_model`` — a tiny real ONNX classifier (``softmax(x @ W + b)``).
- ``onnx_identity_model`` — ``y = Identity(x)`` for one datatype.
- ``onnx_slow_model`` — an ONNX model slow enough to fill queues.
- ``V2Client`` — a small synchronous V2 JSON client; ``V2Error`` is what it raises.
- ``free_port`` / ``free_ports`` — TCP ports nobody listens on.
- ``wait_for`` — poll a condition, failing with its name after a timeout.
- ``metric_value`` — read one series of a node's ``/metrics``.
- ``plugin_distribution`` — an installed-looking distribution with ``dlinfer.plugins`` entry points.
"""

from ..testing import (
    RunningNode,
    V2Client,
    V2Error,
    free_port,
    free_ports,
    metric_value,
    node_config,
    onnx_identity_model,
    onnx_linear_model,
    onnx_slow_model,
    plugin_distribution,
    wait_for,
    write_identity_models,
    write_model,
)

__all__ = [
    "RunningNode",
    "V2Client",
    "V2Error",
    "free_port",
    "free_ports",
    "metric_value",
    "node_config",
    "onnx_identity_model",
    "onnx_linear_model",
    "onnx_slow_model",
    "plugin_distribution",
    "wait_for",
    "write_identity_models",
    "write_model",
]
