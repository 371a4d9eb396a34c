"""The published site in a real browser: headless Chromium driven over the DevTools protocol (a pipe,
no extra packages). The plots must render, nothing may be logged as an error (the pages' Content
Security Policy reports any script or remote fetch as one), and the page must fit a phone's width.

`make test` installs Debian's chromium first (`make browser`); without it this file is skipped.
Screenshots land in $HARNESS_SCREENSHOTS when set, else in the test's temporary folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from base64 import b64decode
from pathlib import Path
from typing import Any

import pytest
from results_factory import fake_cell, write_benchmark

from harness.report import build_report

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed and `make browser` could not install it (apt-get needs root)",
    ),
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PHONE_WIDTH = 390


class Chromium:
    """Just enough of the DevTools protocol: commands on fd 3, replies and events on fd 4, NUL-separated."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()

        def as_fds_3_and_4() -> None:  # in the child, before exec
            high_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen(
            [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=as_fds_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._next_id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        return self._wait(lambda m: m.get("method") == method, timeout)

    def _wait(self, wanted, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buffer += chunk

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._commands)
        os.close(self._replies)


def errors_logged(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and browser log errors (CSP violations, failed loads)."""
    found = []
    for event in events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif event["method"] == "Runtime.exceptionThrown":
            found.append(params["exceptionDetails"].get("text", "exception"))
        elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(params["entry"]["text"])
    return found


PAGE_FACTS = """JSON.stringify({
  figures: Array.from(document.querySelectorAll('figure svg')).map(svg => {
    const box = svg.getBoundingClientRect();
    return {width: box.width, height: box.height, marks: svg.querySelectorAll('path, use').length};
  }),
  scripts: document.querySelectorAll('script').length,
  scrollWidth: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
  text: document.body.innerText,
})"""


def visit(browser: Chromium, url: str, width: int, height: int, mobile: bool, screenshot: Path) -> dict[str, Any]:
    """Open ``url`` in a fresh tab at the given viewport; the page's facts plus a full-page screenshot."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        browser.send(f"{domain}.enable", session)
    scale = 2 if mobile else 1
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=width,
        height=height,
        deviceScaleFactor=scale,
        mobile=mobile,
    )
    browser.events.clear()
    browser.send("Page.navigate", session, url=url)
    browser.wait_event("Page.loadEventFired")
    facts = json.loads(
        browser.send("Runtime.evaluate", session, expression=PAGE_FACTS, returnByValue=True)["result"]["value"]
    )
    clip = {"x": 0, "y": 0, "width": width, "height": min(facts["height"], 4000), "scale": 1}
    shot = browser.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True, clip=clip)
    screenshot.write_bytes(b64decode(shot["data"]))
    facts["errors"] = errors_logged(browser.events)
    browser.send("Target.closeTarget", targetId=target)
    return facts


@pytest.fixture
def site(tmp_path: Path) -> Path:
    pairs = (("digits", "lenet_300_100"), ("mnist1d", "mnist1d_mlp"), ("cifar10", "resnet20"))
    store = write_benchmark(tmp_path / "results", pairs=pairs)
    store.write(fake_cell("demo", "digits", "lenet_300_100", "<script>alert(1)</script>", 0.5, 0))
    build_report([tmp_path / "results"], tmp_path / "site")
    return tmp_path / "site"


def test_site_renders_its_curves_in_chromium_without_errors_and_fits_a_phone(site: Path, tmp_path: Path) -> None:
    shots = Path(os.environ.get("HARNESS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser = Chromium(CHROMIUM, tmp_path / "profile")
    try:
        index = visit(browser, (site / "index.html").as_uri(), 1280, 900, False, shots / "report-index.png")
        pair = next(p for p in site.glob("digits--*.html"))
        detail = visit(browser, pair.as_uri(), 1280, 900, False, shots / "report-pair.png")
        phone = visit(browser, (site / "index.html").as_uri(), PHONE_WIDTH, 844, True, shots / "report-phone.png")
    finally:
        browser.close()

    assert index["errors"] == [] and detail["errors"] == [] and phone["errors"] == []
    # one curve per data set × model on the index, each drawn at a readable size with its lines and markers
    assert len(index["figures"]) == 3
    for figure in index["figures"]:
        assert figure["width"] > 500 and figure["height"] > 250 and figure["marks"] > 20
    assert len(detail["figures"]) >= 2  # top-1 against compression and against speedup
    # the method named <script> is text on the page, never an element
    assert index["scripts"] == 0 and "<script>alert(1)</script>" in index["text"]
    # on a phone the page itself never scrolls sideways (wide tables scroll in their own box)
    assert phone["scrollWidth"] <= PHONE_WIDTH
    assert all(f["width"] <= PHONE_WIDTH for f in phone["figures"])
    assert (shots / "report-index.png").stat().st_size > 10_000
