"""The demo page in a real headless Chromium: it builds one form per endpoint from ``/v1/tasks``; an uploaded image
runs every one-image endpoint (drawing, caption, labels); a form's own button runs it with what was typed.

Chromium comes from Debian (``scripts/install_browser.sh``, run by the CI set-up); it is driven over
the DevTools protocol with the ``websockets`` client Ray Serve already depends on. A missing browser is
a failure, not a skip: the set-up must install it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import requests

APP = "serve-browser"


class Browser:
    """A headless Chromium page driven over the DevTools protocol (only what the test needs)."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        executable = shutil.which("chromium") or shutil.which("chromium-browser")
        if executable is None:
            pytest.fail("chromium is not installed: run 'sudo make browser' once (make test installs it when run as root)")
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-quic",
             "--remote-allow-origins=*", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1000,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._devtools_port(profile)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.loads(response.read()) if t["type"] == "page")
        self.connection = contextlib.ExitStack()  # the client wants its connection used as a context manager
        self.socket = self.connection.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=2**26, open_timeout=10))
        self.ids = itertools.count(1)

    def _devtools_port(self, profile: Path, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        port_file = profile / "DevToolsActivePort"
        while time.monotonic() < deadline:
            if port_file.is_file() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            if self.process.poll() is not None:
                pytest.fail(f"chromium exited: {self.process.stderr.read()[-2000:]}")
            time.sleep(0.1)
        pytest.fail("chromium did not open its DevTools port")

    def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 90.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"still false after {timeout_s} s: {expression}")

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && document.body.dataset.state === 'ready'", 60)

    def set_file(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.connection.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def base_url(ray_local, tiny_checkpoint):
    from serve.app import AppArgs, build_app
    from serve.local_run import run_local, stop_local

    args = AppArgs(checkpoint=str(tiny_checkpoint), model_num_cpus=0.5, ingress_num_cpus=0.25,
                   warmup=False)
    url = run_local(build_app(args), name=APP)
    yield url
    stop_local()


@pytest.fixture()
def browser(tmp_path):
    page = Browser(tmp_path / "profile")
    yield page
    page.close()


def test_demo_page_draws_detections_and_shows_the_caption(base_url, browser, embedded_raw, tmp_path):
    image = sorted((embedded_raw / "coco" / "val2017").glob("*.jpg"))[0]
    expected = requests.post(base_url + "/v1/caption", files={"image": image.read_bytes()}, timeout=60).json()
    segmented = requests.post(base_url + "/v1/segment", files={"image": image.read_bytes()},
                              data={"max_detections": "10"}, timeout=60).json()
    served = requests.get(base_url + "/v1/tasks", timeout=60).json()["tasks"]

    browser.open(base_url + "/")
    sections = browser.evaluate("[...document.querySelectorAll('section[data-route]')].map(s => s.dataset.route)")
    assert sections == [route["path"] for task in served.values() for route in task["routes"]]  # from /v1/tasks
    browser.set_file("#file", image)
    state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")
    assert state == "done", browser.evaluate("document.querySelector('#status').textContent")

    def inside(route: str, selector: str) -> str:
        return f"document.querySelector('section[data-route=\"{route}\"] {selector}')"

    assert browser.evaluate(inside("/v1/caption", ".answer-text") + ".textContent") == expected["caption"]
    assert int(browser.evaluate(inside("/v1/segment", "canvas") + ".dataset.drawn")) == len(segmented["boxes"]) > 0
    # The drawing is on the canvas: it is no longer blank, and labels are listed.
    colours = browser.evaluate("(() => { const c = " + inside("/v1/segment", "canvas") + """;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const seen = new Set();
        for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
        return seen.size; })()""")
    assert colours > 3
    assert browser.evaluate("document.querySelectorAll('section[data-route=\"/v1/classify\"] tbody tr').length") == 5

    ranking = 'section[data-route="/v1/retrieve/text"]'
    browser.evaluate(f"document.querySelector('{ranking} textarea[name=texts]').value = "
                     "'a red circle\\ntwo blue squares\\na green star'")
    browser.evaluate(f"document.querySelector('{ranking} button').click()")
    browser.wait_for(f"document.querySelector('{ranking}').dataset.state === 'done'")
    ranked = browser.evaluate(f"[...document.querySelectorAll('{ranking} li')].map(li => li.textContent)")
    assert len(ranked) == 3
    assert {re.sub(r"\s*\(.*\)$", "", text) for text in ranked} == {"a red circle", "two blue squares", "a green star"}

    # An endpoint without an image runs from its form alone.
    filling = 'section[data-route="/v1/fill_mask"]'
    browser.evaluate(f"document.querySelector('{filling} button').click()")
    assert browser.wait_for(f"['done', 'error'].includes(document.querySelector('{filling}').dataset.state) && "
                            f"document.querySelector('{filling}').dataset.state") == "done"
    assert browser.evaluate(f"document.querySelector('{filling} .answer-text').textContent")
    browser.screenshot(tmp_path / "demo.png")
