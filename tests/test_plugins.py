"""Plugin discovery through real entry points (dist-info on sys.path), blocking,
failures, duplicates, tracing and plugins_dir."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlinfer import hookimpl
from dlinfer.config import node_config_from_dict
from dlinfer.errors import PluginLoadError
from dlinfer.plugins import Plugins
from dlinfer.testing import plugin_distribution

GOOD = """
from dlinfer import hookimpl, Loader

class EchoLoader(Loader):
    name = "echo"
    formats = ("echo",)

    @classmethod
    def detect(cls, path):
        return None

    def load(self, config, path):
        raise NotImplementedError

@hookimpl
def dlinfer_model_formats():
    return [EchoLoader]
"""

BROKEN = "raise ImportError('libfoo.so: cannot open shared object file')\n"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    monkeypatch.syspath_prepend(str(site_dir))
    yield site_dir
    importlib.invalidate_caches()
    for mod in [m for m in sys.modules if m.startswith("dlinfer_test_")]:
        del sys.modules[mod]


def _config(**plugins: object) -> object:
    return node_config_from_dict({"plugins": plugins} if plugins else {})


def test_entry_point_plugin_is_loaded_and_listed(site: Path) -> None:
    plugin_distribution(site, "dlinfer-echo", {"echo": "dlinfer_test_echo"}, {"dlinfer_test_echo": GOOD}, "1.2.3")
    plugins = Plugins(_config()).load()
    info = {p.name: p for p in plugins.list()}["echo"]
    assert (info.distribution, info.version, info.status) == ("dlinfer-echo", "1.2.3", "loaded")
    assert info.hooks == ("dlinfer_model_formats",)
    assert plugins.registry("dlinfer_model_formats")["echo"].distribution == "dlinfer-echo"


def test_builtins_are_plugins_too() -> None:
    plugins = Plugins(_config()).load(entry_points=False)
    names = {p.name: p for p in plugins.list()}
    assert "dlinfer_routes" in names["dlinfer.server.v2_http"].hooks
    assert names["dlinfer.builtin.json_codec"].distribution == "dlinfer"
    assert "json" in plugins.registry("dlinfer_codecs")


def test_disabled_plugin_is_not_imported(site: Path) -> None:
    plugin_distribution(site, "dlinfer-broken", {"broken": "dlinfer_test_broken"}, {"dlinfer_test_broken": BROKEN})
    plugins = Plugins(_config(disable=["broken"])).load()
    assert {p.name: p.status for p in plugins.list()}["broken"] == "disabled"
    assert "dlinfer_test_broken" not in sys.modules


def test_import_failure_names_plugin_and_distribution(site: Path) -> None:
    plugin_distribution(
        site, "dlinfer-broken", {"broken": "dlinfer_test_broken"}, {"dlinfer_test_broken": BROKEN}, "0.9"
    )
    with pytest.raises(PluginLoadError) as info:
        Plugins(_config()).load()
    msg = str(info.value)
    assert "plugin 'broken' from distribution dlinfer-broken 0.9 failed to import" in msg
    assert "libfoo.so: cannot open shared object file" in msg
    assert "optional" in msg


def test_optional_plugin_failure_is_reported_not_fatal(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    plugin_distribution(site, "dlinfer-broken", {"broken": "dlinfer_test_broken"}, {"dlinfer_test_broken": BROKEN})
    with caplog.at_level(logging.WARNING):
        plugins = Plugins(_config(optional=["broken"])).load()
    info = {p.name: p for p in plugins.list()}["broken"]
    assert info.status == "failed" and "ImportError" in info.error
    assert "continuing because it is optional" in caplog.text


def test_same_name_in_two_distributions_is_an_error(site: Path) -> None:
    plugin_distribution(site, "dlinfer-echo-a", {"echo": "dlinfer_test_echo"}, {"dlinfer_test_echo": GOOD})
    plugin_distribution(site, "dlinfer-echo-b", {"echo": "dlinfer_test_echo"})
    with pytest.raises(PluginLoadError, match=r"'echo' is registered by two distributions: dlinfer-echo-\w and"):
        Plugins(_config()).load()


def test_duplicate_catalogue_names_name_both_distributions(site: Path) -> None:
    plugin_distribution(site, "dlinfer-echo-a", {"echo_a": "dlinfer_test_echo_a"}, {"dlinfer_test_echo_a": GOOD})
    plugin_distribution(site, "dlinfer-echo-b", {"echo_b": "dlinfer_test_echo_b"}, {"dlinfer_test_echo_b": GOOD})
    plugins = Plugins(_config()).load()
    with pytest.raises(PluginLoadError) as info:
        plugins.check_registries()
    msg = str(info.value)
    assert "dlinfer_model_formats: name 'echo' is provided twice" in msg
    assert "dlinfer-echo-a" in msg and "dlinfer-echo-b" in msg


def test_autoload_disabled_loads_only_enabled(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin_distribution(site, "dlinfer-echo", {"echo": "dlinfer_test_echo"}, {"dlinfer_test_echo": GOOD})
    plugin_distribution(site, "dlinfer-broken", {"broken": "dlinfer_test_broken"}, {"dlinfer_test_broken": BROKEN})
    monkeypatch.setenv("DLINFER_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = Plugins(_config(enable=["echo"])).load()
    status = {p.name: p.status for p in plugins.list()}
    assert status["echo"] == "loaded"
    assert status["broken"] == "disabled"
    assert status["dlinfer.server.v2_http"] == "loaded"  # built-ins always load


def test_trace_plugins_logs_hook_calls(site: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setenv("DLINFER_TRACE_PLUGINS", "1")
    with caplog.at_level(logging.INFO, logger="dlinfer.plugins"):
        plugins = Plugins(_config()).load(entry_points=False)
        plugins.hook.dlinfer_codecs()
    assert "trace:   dlinfer_configure [hook]" in caplog.text
    assert "finish dlinfer_codecs -->" in caplog.text


def test_plugins_dir_single_file(tmp_path: Path) -> None:
    pdir = tmp_path / "local_plugins"
    pdir.mkdir()
    (pdir / "echo_local.py").write_text(GOOD)
    cfg = node_config_from_dict({"plugins": {"plugins_dir": "local_plugins"}}, base_dir=str(tmp_path))
    plugins = Plugins(cfg).load(entry_points=False)
    assert {p.name: p.distribution for p in plugins.list()}["echo_local"] == "plugins_dir"
    assert "echo" in plugins.registry("dlinfer_model_formats")


def test_cli_plugins_list_shows_entry_point_plugins(site: Path) -> None:
    plugin_distribution(site, "dlinfer-echo", {"echo": "dlinfer_test_echo"}, {"dlinfer_test_echo": GOOD}, "1.2.3")
    proc = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "plugins", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "PYTHONPATH": str(site)},
    )
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("echo "))
    assert line.split()[:4] == ["echo", "dlinfer-echo", "1.2.3", "loaded"]
    assert "dlinfer_model_formats" in line
    assert any(ln.startswith("onnx ") and "dlinfer-onnx" in ln for ln in proc.stdout.splitlines())


def test_cli_refuses_to_start_when_plugin_breaks(site: Path, tmp_path: Path) -> None:
    plugin_distribution(site, "dlinfer-broken", {"broken": "dlinfer_test_broken"}, {"dlinfer_test_broken": BROKEN})
    proc = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "--model-repository", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "PYTHONPATH": str(site)},
    )
    assert proc.returncode == 2
    assert "plugin 'broken' from distribution dlinfer-broken" in proc.stderr
    assert "Traceback" not in proc.stderr


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("DLINFER_")}


DECLARER = """
from dlinfer import hookimpl
from dlinfer.hookspecs import catalogue, hookspec

class Specs:
    @catalogue
    @hookspec
    def dlinfer_greetings():
        '''Return greeting classes.'''

@hookimpl
def dlinfer_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(Specs)
"""

GREETER = """
from dlinfer import hookimpl

class Hello:
    name = "hello"

@hookimpl{marker}
def dlinfer_greetings():
    return [Hello]
"""


class EarlyGreeter:
    """Registered before the plugin that declares its hook."""

    class Hi:
        name = "hi"

    @hookimpl
    def dlinfer_greetings(self) -> list[type]:
        return [self.Hi]


def test_plugin_declares_hooks_for_plugins_registered_before_and_after(site: Path) -> None:
    plugin_distribution(
        site, "dlinfer-greetings", {"greetings": "dlinfer_test_declarer"}, {"dlinfer_test_declarer": DECLARER}
    )
    plugin_distribution(
        site, "dlinfer-hello", {"hello": "dlinfer_test_hello"}, {"dlinfer_test_hello": GREETER.format(marker="")}
    )
    plugins = Plugins(_config())
    plugins.register(EarlyGreeter(), "early")
    plugins.load()
    assert plugins.declared["greetings"] == ("dlinfer_greetings",)
    assert "dlinfer_greetings" in plugins.catalogues()
    assert {n: e.plugin for n, e in plugins.registry("dlinfer_greetings").items()} == {"hi": "early", "hello": "hello"}


def test_hook_nobody_declares_stops_with_plugin_and_hook_named(site: Path) -> None:
    plugin_distribution(
        site, "dlinfer-greetings", {"greetings": "dlinfer_test_declarer"}, {"dlinfer_test_declarer": DECLARER}
    )
    plugin_distribution(
        site, "dlinfer-hello", {"hello": "dlinfer_test_hello"}, {"dlinfer_test_hello": GREETER.format(marker="")}
    )
    with pytest.raises(PluginLoadError) as info:
        Plugins(_config(disable=["greetings"])).load()
    message = str(info.value)
    assert "plugin 'hello' (dlinfer-hello) implements dlinfer_greetings, which no loaded plugin declares" in message
    assert "optionalhook=True" in message


def test_optional_hook_or_optional_plugin_loads_without_the_declaring_plugin(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugin_distribution(
        site, "dlinfer-greetings", {"greetings": "dlinfer_test_declarer"}, {"dlinfer_test_declarer": DECLARER}
    )
    plugin_distribution(
        site, "dlinfer-hello", {"hello": "dlinfer_test_hello"}, {"dlinfer_test_hello": GREETER.format(marker="")}
    )
    plugins = Plugins(_config(disable=["greetings"], optional=["hello"])).load()
    info = {p.name: p for p in plugins.list()}["hello"]
    assert info.status == "failed" and "dlinfer_greetings" in info.error
    assert not plugins.pm.has_plugin("hello")

    plugin_distribution(
        site,
        "dlinfer-hello",
        {"hello": "dlinfer_test_hello2"},
        {"dlinfer_test_hello2": GREETER.format(marker="(optionalhook=True)")},
    )
    with caplog.at_level(logging.INFO, logger="dlinfer.plugins"):
        plugins = Plugins(_config(disable=["greetings"])).load()
    assert {p.name: p.status for p in plugins.list()}["hello"] == "loaded"
    assert "'hello' implements dlinfer_greetings, which no loaded plugin declares: ignored" in caplog.text
    with pytest.raises(PluginLoadError, match="no loaded plugin declares the hook 'dlinfer_greetings'"):
        plugins.registry("dlinfer_greetings")


STRATEGY = """
from dlinfer import hookimpl

class Sticky:
    name = "sticky"

    def pick(self, model, candidates, request):
        return candidates[0]

    def observe(self, node, outcome, latency_s):
        pass

@hookimpl
def dlinfer_balancers():
    return [Sticky]
"""


def test_plugins_list_shows_what_each_plugin_provides_in_cli_and_http(site: Path, tmp_path: Path) -> None:
    import json

    import requests

    from dlinfer.testing import RunningNode, node_config

    plugin_distribution(site, "dlinfer-echo", {"echo": "dlinfer_test_echo"}, {"dlinfer_test_echo": GOOD}, "1.2.3")
    plugin_distribution(site, "dlinfer-sticky", {"sticky": "dlinfer_test_sticky"}, {"dlinfer_test_sticky": STRATEGY})
    proc = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "PYTHONPATH": str(site)},
    )
    assert proc.returncode == 0, proc.stderr
    cli = {row["name"]: row for row in json.loads(proc.stdout)}
    assert cli["echo"]["provides"] == {"model_formats": ["echo"]}
    assert cli["sticky"]["provides"] == {"balancers": ["sticky"]}  # a catalogue dlinfer-lb declares
    assert cli["lb"]["provides"]["hookspecs"] == ["dlinfer_balancers"]
    assert "swrr" in cli["lb"]["provides"]["balancers"]
    assert cli["onnx"]["provides"] == {"model_formats": ["onnx"]}
    assert cli["dlinfer.builtin.json_codec"]["provides"] == {"codecs": ["json"]}

    with RunningNode(node_config(tmp_path / "models")) as node:
        http = {row["name"]: row for row in requests.get(f"{node.url}/v2/-/plugins", timeout=10).json()}
    assert http == cli

    table = subprocess.run(
        [sys.executable, "-m", "dlinfer.cli", "plugins", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "PYTHONPATH": str(site)},
    ).stdout
    line = next(ln for ln in table.splitlines() if ln.startswith("sticky "))
    assert "balancers: sticky" in line and "dlinfer_balancers" in line
