"""A real browser for tests: Debian's headless Chromium, driven over the DevTools protocol on a pipe.

No library: `--remote-debugging-pipe` has Chromium read commands from fd 3 and write replies
and events to fd 4, each a JSON text ended by a NUL byte. The browser runs with no network at
all (in a new user and network namespace, `unshare -rn`) where the kernel allows it, and the
test also sees every request the page tries (``Network.requestWillBeSent``), every console
message and every Content-Security-Policy violation (``Log.entryAdded``, ``Runtime.*``).

`browser_or_skip` installs the ``chromium`` package with apt-get where it is missing and
skips, saying why, where it cannot be.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

DEADLINE = 60.0


def browser_or_skip() -> str:
    """The Chromium binary, installed with apt-get where missing; skips the test where it cannot be."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        installed = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                                   capture_output=True, text=True, timeout=900, check=False)
        found = shutil.which("chromium")
        if found is None:
            pytest.skip(f"chromium is not installed and apt-get could not install it: {installed.stderr[-300:]}")
    if found is None:
        pytest.skip("chromium is not installed, and installing it needs apt-get as root")
    return found


def offline_prefix() -> list[str]:
    """``unshare -rn`` where the kernel lets this user make a network namespace, else nothing."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-rn"]
    return []


PLACE_FDS = """
import os, sys
read, write = int(sys.argv[1]), int(sys.argv[2])
os.dup2(read, 3)
os.dup2(write, 4)
for fd in {read, write} - {3, 4}:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


class Page:
    """What one page did while it loaded: console messages, requests, and its DOM and pictures."""

    def __init__(self, binary: str, offline: bool = True) -> None:
        self.profile = tempfile.mkdtemp(prefix="anticloud-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium wants them as its fds 3 and 4, whatever numbers they have here: a few lines of
        # Python put them there in the child and exec the browser.
        command = [*(offline_prefix() if offline else []), sys.executable, "-c", PLACE_FDS, str(to_browser_r),
                   str(from_browser_w), binary, "--headless", "--no-sandbox", "--disable-gpu",
                   "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                   "--window-size=1200,900", "about:blank"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, pass_fds=(to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""

    def close(self) -> None:
        with contextlib.suppress(OSError, AssertionError):  # it may be gone already
            self.send("Browser.close", session=False)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        if self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == self._next_id, f"the reply to {method}")
        assert "error" not in reply, f"{method}: {reply['error']}"
        result: dict[str, Any] = reply["result"]
        return result

    def _until(self, wanted: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message: dict[str, Any] = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            assert left > 0, f"chromium did not send {what} within {DEADLINE} s"
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                assert chunk, f"chromium closed its pipe before {what} (exit {self.process.poll()})"
                self._buffer += chunk

    def load(self, url: str) -> None:
        """Navigate to ``url`` and wait for its load event, then for the events already queued."""
        self.send("Page.navigate", {"url": url})
        self._until(lambda m: m.get("method") == "Page.loadEventFired", f"the load event of {url}")
        self.send("Runtime.evaluate", {"expression": "1"})  # a round trip: what the load caused has arrived

    def problems(self) -> list[str]:
        """Console errors and warnings, CSP violations, uncaught exceptions, in the browser's words."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"{params['entry'].get('source')}: {params['entry']['text']}")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
        return found

    def requests(self) -> list[str]:
        """Every URL the page asked for, the page's own first."""
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def html(self) -> str:
        root = self.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
        text: str = self.send("DOM.getOuterHTML", {"nodeId": root})["outerHTML"]
        return text

    def screenshot(self, path: Path, width: int = 1200, height: int | None = None) -> None:
        """The page from its top, ``height`` pixels of it (default: all, not only the window), as a PNG."""
        whole = self.send("Runtime.evaluate", {"expression": "document.documentElement.scrollHeight",
                                               "returnByValue": True})["result"]["value"]
        height = min(int(whole), height or int(whole))
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": False})
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": width, "height": height,
                                                             "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))

    def pdf(self) -> bytes:
        return base64.b64decode(self.send("Page.printToPDF", {"printBackground": True})["data"])
