"""The logging extension: tritonclient's get/update_log_settings over HTTP and gRPC change the
node's log level while it runs; bad settings are refused; the control token guards changes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.api.testing import RunningNode, node_config

TOKEN = "log-token"


@pytest.fixture(autouse=True)
def restore_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with RunningNode(node_config(tmp_path_factory.mktemp("logs"))) as n:
        yield n


def test_http_read_and_change(node: RunningNode) -> None:
    client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    assert set(client.get_log_settings()) == {
        "log_file",
        "log_info",
        "log_warning",
        "log_error",
        "log_verbose_level",
        "log_format",
    }
    client.update_log_settings({"log_verbose_level": 1})
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    settings = client.update_log_settings({"log_verbose_level": 0, "log_info": False})
    assert logging.getLogger().getEffectiveLevel() == logging.WARNING
    assert settings["log_info"] is False and settings["log_warning"] is True
    assert "logging" in client.get_server_metadata()["extensions"]
    client.close()


def test_grpc_read_and_change(node: RunningNode) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    client.update_log_settings({"log_info": False, "log_warning": False, "log_verbose_level": 0})
    assert logging.getLogger().getEffectiveLevel() == logging.ERROR
    settings = client.get_log_settings(as_json=True)["settings"]
    assert settings["log_error"]["bool_param"] is True and settings["log_warning"]["bool_param"] is False
    client.update_log_settings({"log_info": True})
    assert logging.getLogger().getEffectiveLevel() == logging.INFO
    assert "logging" in client.get_server_metadata(as_json=True)["extensions"]
    client.close()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"log_file": "/tmp/elsewhere.log"}, "log_file cannot be set"),
        ({"log_verbose_level": -1}, "non-negative integer"),
        ({"log_info": "yes"}, "must be a bool"),
        ({"log_format": "xml"}, "log_format must be one of"),
        ({"log_colour": True}, "unknown log setting"),
    ],
)
def test_bad_settings_are_refused_and_change_nothing(node: RunningNode, doc: dict, message: str) -> None:
    before = logging.getLogger().getEffectiveLevel()
    r = requests.post(f"{node.url}/v2/logging", json={"log_verbose_level": 1, **doc}, timeout=10)
    assert r.status_code == 400 and message in r.json()["error"]
    assert logging.getLogger().getEffectiveLevel() == before


def test_changes_need_the_control_token(tmp_path: Path) -> None:
    with RunningNode(node_config(tmp_path, repository={"control_token": TOKEN})) as n:
        assert requests.get(f"{n.url}/v2/logging", timeout=10).ok
        r = requests.post(f"{n.url}/v2/logging", json={"log_verbose_level": 1}, timeout=10)
        assert r.status_code == 401
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{n.config.server.grpc_port}")
        with pytest.raises(InferenceServerException, match="control token"):
            client.update_log_settings({"log_verbose_level": 1})
        client.update_log_settings({"log_verbose_level": 1}, headers={"authorization": f"Bearer {TOKEN}"})
        assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
        client.close()
