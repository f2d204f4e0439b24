"""node.toml and config.toml validation: every bad file names file, key and expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dlinfer.config import load_node_config
from dlinfer.errors import ConfigError
from dlinfer.model import model_config_from_dict
from dlinfer.settings import read_toml

BAD_NODE_CONFIGS = [
    ("[server]\nhttp_port = 'abc'\n", "server.http_port: expected an integer, got 'abc' (str)"),
    ("[server]\nhttp_port = 70000\n", "server.http_port: expected an integer from 0 to 65535, got 70000 (int)"),
    ("[server]\nhttpport = 1\n", "server.httpport: unknown key; expected one of"),
    ("[serverr]\n", "serverr: unknown key; expected one of"),
    ("server = 3\n", "server: expected a table, got 3 (int)"),
    (
        "[repository]\ncontrol_mode = 'sometimes'\n",
        "repository.control_mode: expected one of 'none', 'explicit', 'poll'",
    ),
    ("[plugins]\ndisable = 'onnx'\n", "plugins.disable: expected an array of strings, got 'onnx' (str)"),
    ("[plugins]\ndisable = ['onnx', 3]\n", "plugins.disable[1]: expected a string, got 3 (int)"),
    ("[limits]\nmax_body_bytes = 10\n", "limits.max_body_bytes: expected an integer >= 1024, got 10 (int)"),
    ("[limits]\nmax_batch_size = true\n", "limits.max_batch_size: expected an integer, got True (bool)"),
    ("[logging]\nlevel = 'loud'\n", "logging.level: expected one of 'debug', 'info', 'warning', 'error', got 'loud'"),
    ("[threads]\nintra_op = -1\n", "threads.intra_op: expected an integer from 0 to 1024, got -1 (int)"),
    ("[server\n", "invalid TOML"),
    ("base_dir = '/'\n", "base_dir: unknown key"),
]


@pytest.mark.parametrize(("text", "message"), BAD_NODE_CONFIGS)
def test_bad_node_config_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.toml: file not found"):
        load_node_config(tmp_path / "node.toml")


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "node.toml"
    path.parent.mkdir()
    path.write_text("[repository]\npath = '../models'\n[plugins.lb]\nstrategy = 'p2c'\n")
    cfg = load_node_config(path, **{"server.http_port": 9123})
    assert cfg.repository_path == (tmp_path / "models").resolve()
    assert cfg.server.http_port == 9123
    assert cfg.plugin_settings("lb") == {"strategy": "p2c"}
    assert cfg.limits.max_body_bytes == 64 * 1024 * 1024


BAD_MODEL_CONFIGS = [
    ({"max_batch_size": -1}, "max_batch_size: expected an integer >= 0, got -1 (int)"),
    ({"input": [{"name": "x", "datatype": "FLOAT"}]}, "input[0].datatype: expected one of 'BOOL'"),
    ({"input": [{"name": "x", "datatype": "FP32", "shape": [0]}]}, "input[0].shape: expected dimensions that are"),
    ({"input": [{"datatype": "FP32"}]}, "input[0].name: required key is missing"),
    ({"version_policy": {"latest": 1, "all": True}}, "version_policy.latest: expected only one of latest"),
    ({"instance_count": 0}, "instance_count: expected an integer from 1 to 64, got 0 (int)"),
    ({"dynamic_batching": {"max_queue_delay_us": "fast"}}, "dynamic_batching.max_queue_delay_us: expected an integer"),
    ({"platform": "onnx"}, "platform: unknown key; expected one of"),
]


@pytest.mark.parametrize(("data", "message"), BAD_MODEL_CONFIGS)
def test_bad_model_config(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        model_config_from_dict(data, "models/m/config.toml")
    assert str(info.value).startswith("models/m/config.toml: ")
    assert message in str(info.value)


def test_read_toml_reports_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        read_toml(path)


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[server]\nhttp_port = 'abc'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"dlinfer-core: error: {path}: server.http_port: expected an integer, got 'abc' (str)"
    )


def test_default_threads_follow_the_cpus_this_process_may_use() -> None:
    """Pinned to one CPU (taskset, a container's cpuset), a node defaults to one math thread, not the
    machine's count: more threads than usable CPUs only take turns."""
    import os
    import subprocess
    import sys

    code = "from dlinfer.config import NodeConfig; print(NodeConfig().intra_op_threads)"
    pinned = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert pinned.stdout.strip() == "1"
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert free.stdout.strip() == str(len(os.sched_getaffinity(0)))
