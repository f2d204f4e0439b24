"""The operator console in a real headless Chromium against a real node.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them). The browser runs with background networking off: the page must
work with nothing but the node.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from dlinfer.config import NodeConfig
from dlinfer.testing import RunningNode, node_config, onnx_linear_model, write_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "console-token"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _repository(root: Path) -> Path:
    write_model(root, "linear", 1, {"model.onnx": onnx_linear_model(seed=4)})
    write_model(root, "broken", 1, {"model.onnx": b"this is not an onnx file"})
    return root


def _wait(driver: WebDriver, condition: object, timeout_s: float = 20) -> object:
    return WebDriverWait(driver, timeout_s).until(condition)


def _open(driver: WebDriver, node: RunningNode) -> None:
    driver.get(node.url + "/")  # the root redirects to the console
    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true")


# The tables are redrawn every refresh, so read and click them in one script call (no stale elements).
def _cells(driver: WebDriver, selector: str) -> list[list[str]]:
    script = "return [...document.querySelectorAll(arguments[0])].map(tr => [...tr.cells].map(td => td.innerText))"
    return driver.execute_script(script, selector)


def _row(driver: WebDriver, model: str) -> list[str]:
    rows = _cells(driver, f'#models tbody tr[data-model="{model}"]')
    return rows[0] if rows else []


def _click(driver: WebDriver, selector: str) -> None:
    driver.execute_script("document.querySelector(arguments[0]).click()", selector)


def test_console_shows_node_and_runs_an_inference(browser: WebDriver, tmp_path: Path) -> None:
    config = node_config(
        _repository(tmp_path / "models"),
        repository={"startup_models": ["linear", "broken"], "control_token": TOKEN},
    )
    with RunningNode(config) as node:
        _open(browser, node)
        assert browser.current_url == node.url + "/-/console"
        assert "dlinfer" in browser.find_element(By.ID, "server").text
        assert browser.find_element(By.ID, "ready").text == "ready"
        assert browser.find_element(By.ID, "mode").text == "control enabled"

        # Models with state; the failed one with its reason.
        _wait(browser, lambda d: len(_row(d, "broken")) > 3)
        linear, broken = _row(browser, "linear"), _row(browser, "broken")
        assert linear[:3] == ["linear", "1", "READY"]
        assert broken[:3] == ["broken", "1", "UNAVAILABLE"]
        assert "ONNX Runtime cannot load it" in broken[3]

        # Plugins with distribution and version, as the API reports them.
        plugins = requests.get(f"{node.url}/v2/-/plugins").json()
        rows = _cells(browser, "#plugins tbody tr")
        assert [r[:3] for r in rows] == [[p["name"], p["distribution"], p["version"]] for p in plugins]
        assert ["onnx", "dlinfer-onnx"] in [r[:2] for r in rows]

        # "Try it": the form is prefilled from the model's metadata; send our own tensor.
        _wait(browser, lambda d: d.find_element(By.ID, "try-body").get_property("value"))
        prefilled = json.loads(browser.find_element(By.ID, "try-body").get_property("value"))
        assert prefilled == {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
        x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}]}
        browser.execute_script("document.getElementById('try-body').value = arguments[0]", json.dumps(body))
        browser.find_element(By.ID, "try-submit").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#try-outputs tr[data-output="probs"]'))
        cells = browser.find_elements(By.CSS_SELECTOR, '#try-outputs tr[data-output="probs"] td')
        assert [c.text for c in cells[:3]] == ["probs", "FP32", "[1,3]"]
        expected = ort.InferenceSession(onnx_linear_model(seed=4), providers=["CPUExecutionProvider"]).run(
            ["probs"], {"x": x}
        )[0]
        np.testing.assert_allclose(np.array(json.loads(cells[3].text)), expected.ravel(), rtol=1e-5)

        # The inference shows up in the live latency column from /metrics.
        _wait(browser, lambda d: _row(d, "linear")[5].endswith(" ms"))

        # Model control with the token: unload, and the table follows.
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        _click(browser, '#models tr[data-model="linear"] button:last-child')
        _wait(browser, lambda d: "unload linear: done" in d.find_element(By.ID, "control-result").text)
        _wait(browser, lambda d: _row(d, "linear")[2] == "UNAVAILABLE")
        _click(browser, '#models tr[data-model="linear"] button:first-child')
        _wait(browser, lambda d: _row(d, "linear")[2] == "READY")

        browser.execute_script("document.getElementById('try-submit').click()")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#try-outputs tr[data-output="probs"]'))
        screenshot = tmp_path / "console.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000


def test_console_is_read_only_without_control_token(browser: WebDriver, tmp_path: Path) -> None:
    config = node_config(_repository(tmp_path / "models"), repository={"startup_models": ["linear", "broken"]})
    with RunningNode(config) as node:
        _open(browser, node)
        assert browser.find_element(By.ID, "mode").text == "read-only"
        assert not browser.find_element(By.ID, "control").is_displayed()
        _wait(browser, lambda d: len(_row(d, "linear")) > 3)
        assert browser.find_elements(By.CSS_SELECTOR, "#models button") == []
        # A bad request in "try it" shows the server's error message.
        browser.execute_script("document.getElementById('try-body').value = '{\"inputs\": []}'")
        browser.find_element(By.ID, "try-submit").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#try-result .error"))
        assert browser.find_element(By.CSS_SELECTOR, "#try-result .error").text.startswith("400: ")


def test_console_on_a_gateway_shows_nodes_and_traffic_share(
    browser: WebDriver, tmp_path: Path, gateway_config: Callable[[list[str]], NodeConfig]
) -> None:
    node_cfg = node_config(_repository(tmp_path / "models"), repository={"startup_models": ["linear"]})
    with RunningNode(node_cfg) as node, RunningNode(gateway_config([node.url])) as gateway:
        _open(browser, gateway)
        _wait(browser, lambda d: _cells(d, f'#nodes-table tr[data-node="{node.url}"]'))
        header = browser.execute_script(
            "return [...document.querySelectorAll('#nodes-table th')].map(th => th.innerText)"
        )
        assert header[:2] == ["url", "healthy"] and "share" in header
        _wait(browser, lambda d: _row(d, "linear")[2:3] == ["READY"])

        # One inference through the gateway's own try-it form: the only node takes all the traffic.
        _wait(browser, lambda d: d.find_element(By.ID, "try-body").get_property("value"))
        browser.find_element(By.ID, "try-submit").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#try-outputs tr[data-output="probs"]'))

        def node_row(d: WebDriver) -> dict[str, str]:
            rows = _cells(d, f'#nodes-table tr[data-node="{node.url}"]')
            return dict(zip(header, rows[0], strict=True)) if rows else {}

        _wait(browser, lambda d: node_row(d).get("share") == "100.0 %")
        # The gateway's own /metrics give the model's latency and failures (per model, all versions).
        _wait(browser, lambda d: _row(d, "linear")[5].endswith(" ms") and _row(d, "linear")[6] == "0")
        assert node_row(browser)["healthy"] == "healthy" and node_row(browser)["models"] == "linear"
        screenshot = tmp_path / "gateway-console.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
