"""Screenshots of the web console for the README: the chat with a streamed answer and its receipt,
and the status view, taken in Debian's headless Chromium through Selenium.

    PYTHONPATH=. .venv/bin/python tools/console_screenshots.py --out docs

With no ``--url``, it makes a scratch home holding both packaged models (as the tests do), serves
it with ``anticloud serve --isolate --port``, creates a token for ``alice`` and stops the server
afterwards. With ``--url`` and ``--token`` it photographs an appliance that is already running.

The browser helpers here (`chrome`, `sign_in`, `ask`) are the ones tests/test_console_browser.py
drives the page with. Selenium is told not to fetch anything (``SE_OFFLINE``) and is given the
system's chromedriver explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1024, 800
T = TypeVar("T")


def chrome(downloads: Path | None = None, width: int = WIDTH, height: int = HEIGHT,
           binary: str = CHROMIUM, driver: str = CHROMEDRIVER) -> webdriver.Chrome:
    """Headless Chromium in a ``width`` x ``height`` window, logging the console and every request."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", f"--window-size={width},{height}", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                     "--force-device-scale-factor=1", "--lang=en-GB"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(driver), options=options)


def until(condition: Callable[[], T | None], seconds: float, what: str, interval: float = 0.05) -> T:
    """``condition()``'s first truthy value; fails loudly, naming ``what``, at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(interval)


def shown(browser: WebDriver, element_id: str) -> WebElement | None:
    element = browser.find_element(By.ID, element_id)
    return element if element.is_displayed() else None


def sign_in(browser: WebDriver, url: str, token: str) -> None:
    """Open the console at ``url`` and sign in with ``token``; returns once the chat is shown."""
    browser.get(url + "/")
    field = until(lambda: shown(browser, "token"), 20, "the sign-in form")
    field.send_keys(token)
    browser.find_element(By.ID, "signin-button").click()
    until(lambda: shown(browser, "chat"), 20, "the chat after signing in")
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#model option"), 20, "the model list")


def answers(browser: WebDriver) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")


def ask(browser: WebDriver, prompt: str, model: str = "smollm2-135m", length: str | None = None) -> WebElement:
    """Send ``prompt`` to ``model`` by clicking Send; returns the answer's turn (still streaming)."""
    from selenium.webdriver.support.select import Select

    before = len(answers(browser))
    Select(browser.find_element(By.ID, "model")).select_by_value(model)
    if length is not None:
        Select(browser.find_element(By.ID, "length")).select_by_value(length)
    box = browser.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    browser.find_element(By.ID, "send").click()
    return until(lambda: answers(browser)[before] if len(answers(browser)) > before else None, 20, "the answer")


def receipt_of(browser: WebDriver, turn: WebElement, seconds: float = 120) -> dict[str, str]:
    """The receipt shown under ``turn``, field by field, once it is there."""
    until(lambda: turn.find_elements(By.CSS_SELECTOR, ".receipt [data-field='inference']"), seconds,
          "the receipt under the answer")
    return {e.get_attribute("data-field") or "": e.text
            for e in turn.find_elements(By.CSS_SELECTOR, ".receipt [data-field]")}


def take(browser: WebDriver, url: str, token: str, out: Path) -> tuple[Path, Path]:
    """The two pictures: the chat with an answer and its receipt, and the status view."""
    sign_in(browser, url, token)
    turn = ask(browser, "In two sentences, why does a lighthouse flash its light?")
    receipt_of(browser, turn)
    tall = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(WIDTH, min(tall + 140, 1400))  # the window's own chrome, in headless mode too
    browser.execute_script("window.scrollTo(0, 0)")
    chat = out / "console-chat.png"
    chat.write_bytes(browser.get_screenshot_as_png())
    browser.set_window_size(WIDTH, 700)
    browser.find_element(By.ID, "show-status").click()
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#status-list [data-field='ledger-seq']"), 30,
          "the status view")
    status = out / "console-status.png"
    status.write_bytes(browser.get_screenshot_as_png())
    return chat, status


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def serving(home: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``anticloud serve --isolate --port`` on ``home``, until its console page answers; SIGTERM after."""
    import httpx

    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home), "serve", "--isolate",
                               "--port", str(port)], cwd=root, stderr=subprocess.DEVNULL)

    def answering() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode} before it answered")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=2).status_code == 200
        return False

    try:
        until(answering, 60, f"the server on port {port}", interval=0.2)
        yield server
    finally:
        server.terminate()
        server.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--url", help="a running appliance's console, e.g. http://127.0.0.1:11434")
    parser.add_argument("--token", help="a person's token on that appliance")
    args = parser.parse_args()
    if args.url:
        browser = chrome()
        try:
            print(*take(browser, args.url.rstrip("/"), args.token, args.out))
        finally:
            browser.quit()
        return 0
    from click.testing import CliRunner

    from anticloud.cli import cli
    from tests.conftest import operator_imports_real_model, smollm2_file

    with tempfile.TemporaryDirectory(prefix="anticloud-screens-") as scratch:
        home = operator_imports_real_model(Path(scratch), smollm2_file(), "smollm2-135m")
        token = CliRunner().invoke(cli, ["--home", str(home.root), "tokens", "create", "alice"]).stdout.strip()
        port = free_port()
        with serving(home.root, port):
            browser = chrome()
            try:
                print(*take(browser, f"http://127.0.0.1:{port}", token, args.out))
            finally:
                browser.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
