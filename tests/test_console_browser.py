"""The web console in a real browser: Debian's headless Chromium, driven by Selenium through the
system's chromedriver, against `anticloud serve --isolate --port` holding both packaged models.

What a person does (sign in, ask, watch the answer arrive, stop one, read its receipt, lock) is
checked against the ledger file the appliance wrote. Every request the page makes is read from
Chrome's performance log and every console message from its browser log. Answers are judged by
plausibility, never by their wording.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner
from selenium.webdriver import Chrome as WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select

from anticloud.cli import cli
from ledger import verify_file
from tests.conftest import operator_imports_real_model
from tools.console_screenshots import answers, ask, chrome, free_port, receipt_of, serving, shown, sign_in, take, until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
STORY = "The history of bread, told in many long chapters. Chapter 1. In the beginning,"  # a text to continue


def browser_or_skip() -> None:
    """Chromium and its driver, installed with apt-get where missing; skips where they cannot be."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        update = subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=900, check=False)
        install = subprocess.run(["apt-get", "install", "-y", "chromium", "chromium-driver"], capture_output=True,
                                 text=True, timeout=1800, check=False)
        missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
        if missing:
            pytest.skip(f"{', '.join(missing)} missing and apt-get could not install chromium and chromium-driver: "
                        f"{(update.stderr + install.stderr)[-300:]}")
    if missing:
        pytest.skip(f"{', '.join(missing)} missing, and installing chromium-driver needs apt-get as root")


@dataclass(frozen=True)
class Served:
    url: str
    token: str
    ledger: Path
    home: Path


@pytest.fixture(scope="module")
def served(gemma_path: Path, smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An isolated appliance with both packaged models, on a loopback TCP port, and alice's token."""
    browser_or_skip()
    base = tmp_path_factory.mktemp("console")
    operator_imports_real_model(base, gemma_path)
    home = operator_imports_real_model(base, smollm2_path, "smollm2-135m")
    token = CliRunner().invoke(cli, ["--home", str(home.root), "tokens", "create", "alice"]).stdout.strip()
    port = free_port()
    with serving(home.root, port) as server:
        yield Served(f"http://127.0.0.1:{port}", token, home.ledger, home.root)
    assert server.returncode == 0, f"the server exited with {server.returncode} on SIGTERM"
    assert verify_file(home.ledger).status == "intact"


@pytest.fixture
def browser(served: Served, tmp_path: Path) -> Iterator[WebDriver]:
    driver = chrome(downloads=tmp_path)
    try:
        yield driver
    finally:
        driver.quit()


def records(ledger: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ledger.read_bytes().splitlines()]


def since(ledger: Path, seq: int) -> list[dict[str, Any]]:
    return [r for r in records(ledger) if r["seq"] > seq]


def head(ledger: Path) -> int:
    seq: int = records(ledger)[-1]["seq"]
    return seq


def text_of(turn: WebElement) -> str:
    return str(turn.find_element(By.CSS_SELECTOR, ".answer").text)


def streaming(turn: WebElement) -> bool:
    return "streaming" in (turn.get_attribute("class") or "")


def log(browser: WebDriver, kind: str) -> list[dict[str, Any]]:
    """Chrome's ``browser`` (console) or ``performance`` (DevTools events) log, since it was last read."""
    entries: list[dict[str, Any]] = browser.get_log(kind)  # type: ignore[no-untyped-call]
    return entries


def severe(browser: WebDriver) -> list[dict[str, Any]]:
    return [e for e in log(browser, "browser") if e["level"] == "SEVERE"]


def sent(browser: WebDriver) -> list[dict[str, Any]]:
    """Every request the page made (since the last call), from Chrome's performance log."""
    found = []
    for entry in log(browser, "performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            found.append(message["params"]["request"])
    return found


def requested(browser: WebDriver) -> list[str]:
    return [r["url"] for r in sent(browser)]


def origin(url: str) -> str:
    parts = urlsplit(url.removeprefix("blob:"))
    return f"{parts.scheme}://{parts.netloc}"


def test_sign_in_stream_an_answer_and_its_receipt_matches_the_ledger(served: Served, browser: WebDriver,
                                                                     tmp_path: Path) -> None:
    start = head(served.ledger)
    sign_in(browser, served.url, served.token)
    assert browser.find_element(By.ID, "person").text == "alice"
    assert browser.find_element(By.ID, "token").get_attribute("value") == ""
    kept = browser.execute_script("return [localStorage.length, sessionStorage.length, document.cookie, "
                                  "location.href, document.documentElement.outerHTML]")
    assert kept[:3] == [0, 0, ""] and served.token not in kept[3] and served.token not in kept[4]
    about = browser.find_element(By.ID, "model-about").text
    assert "Signed by" in about and "sha3-256:" in about

    turn = ask(browser, "Name three colours of the rainbow and say one thing about each.", length="512")
    lengths = []
    while streaming(turn):
        lengths.append(len(text_of(turn)))
        time.sleep(0.02)
    grown = sorted(set(lengths) - {0})
    assert len(grown) >= 3, f"the answer did not arrive in pieces: lengths seen {lengths}"
    answer = text_of(turn)
    assert len(answer) > 20 and re.search(r"[A-Za-z]{3}", answer), answer

    receipt = receipt_of(browser, turn)
    new = since(served.ledger, start)
    begin = next(r for r in new if r["kind"] == "inference.begin" and r["data"]["id"] == receipt["inference"])
    end = next(r for r in new if r["kind"] == "inference.end" and r["data"]["id"] == receipt["inference"])
    assert (receipt["begin-seq"], receipt["end-seq"]) == (str(begin["seq"]), str(end["seq"]))
    assert receipt["model"] == begin["data"]["model"] == "smollm2-135m"
    assert receipt["manifest"] == begin["data"]["manifest"]
    assert receipt["person"] == "alice" and "alice" in json.dumps(begin["data"]["client"])
    assert receipt["done-reason"] == end["data"]["done_reason"] in ("stop", "length")
    assert receipt["tokens"] == f"{end['data']['prompt_tokens']} in, {end['data']['completion_tokens']} out"
    assert begin["data"]["airgap"] in receipt["airgap"]

    turn.find_element(By.CSS_SELECTOR, ".show-records").click()
    shown_records = turn.find_element(By.CSS_SELECTOR, ".records")
    assert shown_records.is_displayed()
    assert f'"seq": {begin["seq"]}' in shown_records.text and f'"seq": {end["seq"]}' in shown_records.text

    browser.find_element(By.ID, "export").click()
    exported = until(lambda: [p for p in tmp_path.glob("conversation-*.json")], 20, "the exported conversation")
    conversation = json.loads(exported[0].read_text())
    assert [t["role"] for t in conversation["turns"]] == ["user", "assistant"]
    assert conversation["person"] == "alice" and len(conversation["turns"][1]["content"]) >= len(answer) // 2
    assert conversation["turns"][1]["receipt"]["end"]["seq"] == end["seq"]
    assert conversation["turns"][1]["inference"] == receipt["inference"]


def test_a_chat_model_is_sent_the_conversation_and_a_completion_model_the_prompt(served: Served,
                                                                                 browser: WebDriver) -> None:
    sign_in(browser, served.url, served.token)
    first = ask(browser, "My name is Ada. Say hello to me.", length="128")
    until(lambda: not streaming(first), 120, "the first answer")
    second = ask(browser, "What is my name?", length="128")
    until(lambda: not streaming(second), 120, "the second answer")
    third = ask(browser, "The capital of France is", model="gemma3-270m", length="128")
    receipt = receipt_of(browser, third)
    assert receipt["model"] == "gemma3-270m" and len(text_of(third)) > 0
    bodies = [(urlsplit(r["url"]).path, json.loads(r["postData"])) for r in sent(browser)
              if urlsplit(r["url"]).path in ("/api/chat", "/api/generate")]
    assert [path for path, _ in bodies] == ["/api/chat", "/api/chat", "/api/generate"]
    history = bodies[1][1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[0]["content"] == "My name is Ada. Say hello to me." and history[1]["content"].strip()
    assert bodies[2][1]["prompt"] == "The capital of France is" and bodies[2][1]["stream"] is True
    assert bodies[2][1]["options"]["num_predict"] == 128
    browser.find_element(By.ID, "new-conversation").click()
    assert answers(browser) == []


def test_stop_ends_a_generation_midway_and_the_ledger_says_so(served: Served, browser: WebDriver) -> None:
    sign_in(browser, served.url, served.token)
    start = head(served.ledger)
    # The base model continues text rather than ending its answer, so the stop, not the model, ends it.
    turn = ask(browser, STORY, model="gemma3-270m", length="2048")
    until(lambda: len(text_of(turn)) > 40, 120, "the first words of a long answer")
    browser.find_element(By.ID, "stop").click()
    until(lambda: not streaming(turn), 60, "the answer to stop")  # the record says how it ended
    stopped_at = text_of(turn)
    assert "Stopped" in turn.find_element(By.CSS_SELECTOR, ".state").text
    receipt = receipt_of(browser, turn)
    assert receipt["done-reason"] == "client_disconnected"
    end = next(r for r in since(served.ledger, start)
               if r["kind"] == "inference.end" and r["data"]["id"] == receipt["inference"])
    assert end["data"]["done_reason"] == "client_disconnected"
    assert "completion_tokens" not in end["data"] and receipt["tokens"].startswith("not counted")
    assert f"{end['data']['output_chars']} characters out" in receipt["tokens"]
    assert end["data"]["output_chars"] >= 40  # at least what the page had shown when it stopped
    assert text_of(turn) == stopped_at  # nothing more arrived after the stop


def test_escape_stops_and_the_keyboard_alone_signs_in_and_sends(served: Served, browser: WebDriver) -> None:
    browser.get(served.url + "/")
    until(lambda: shown(browser, "token"), 20, "the sign-in form")
    keys = ActionChains(browser)

    def focused() -> str:
        return str(browser.switch_to.active_element.get_attribute("id"))

    assert focused() == "token"  # the page puts the cursor where it is needed
    keys.send_keys(served.token, Keys.ENTER).perform()
    until(lambda: shown(browser, "chat"), 20, "the chat")
    until(lambda: focused() == "prompt", 20, "the cursor in the message box")
    keys.send_keys("first line").key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT)
    keys.send_keys("second line").perform()
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == "first line\nsecond line"
    assert answers(browser) == []  # Shift+Enter is a new line, not a send
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).send_keys(Keys.DELETE).perform()
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == ""
    outline = "return getComputedStyle(document.activeElement).outlineStyle"
    assert browser.execute_script(outline) != "none", "the focused element has no visible focus"
    ActionChains(browser).send_keys(Keys.TAB).perform()  # from the box to its Send button, in reading order
    assert focused() == "send" and browser.execute_script(outline) != "none"
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert focused() == "prompt"

    # The base model continues text rather than ending its answer, so Escape, not the model, ends it.
    Select(browser.find_element(By.ID, "model")).select_by_value("gemma3-270m")
    Select(browser.find_element(By.ID, "length")).select_by_value("2048")
    browser.execute_script("document.getElementById('prompt').focus()")
    ActionChains(browser).send_keys(STORY, Keys.ENTER).perform()
    turn = until(lambda: answers(browser), 20, "the answer")[0]
    until(lambda: len(text_of(turn)) > 20, 120, "the answer to start")
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    until(lambda: not streaming(turn), 20, "Escape to stop the answer")
    assert receipt_of(browser, turn)["done-reason"] == "client_disconnected"


def test_a_wrong_token_is_refused_and_recorded(served: Served, browser: WebDriver) -> None:
    start = head(served.ledger)
    browser.get(served.url + "/")
    field = until(lambda: shown(browser, "token"), 20, "the sign-in form")
    field.send_keys("not-a-token-of-anyone", Keys.ENTER)
    error = until(lambda: browser.find_element(By.ID, "signin-error").text, 20, "the refusal")
    assert error.startswith("Not signed in")
    assert not browser.find_element(By.ID, "chat").is_displayed()
    rejected = until(lambda: [r for r in since(served.ledger, start) if r["kind"] == "request.rejected"], 90,
                     "the rejection in the ledger")
    assert "/console/session" in json.dumps(rejected)
    assert "not-a-token-of-anyone" not in served.ledger.read_text()


def test_lock_ends_the_session_and_is_recorded(served: Served, browser: WebDriver) -> None:
    sign_in(browser, served.url, served.token)
    start = head(served.ledger)
    browser.find_element(By.ID, "lock").click()
    until(lambda: shown(browser, "signin"), 20, "the sign-in after locking")
    assert "Locked" in browser.find_element(By.ID, "signin-reason").text
    assert not browser.find_element(By.ID, "chat").is_displayed()
    assert browser.find_element(By.ID, "person").text == ""
    status = browser.execute_async_script(
        "const done = arguments[0]; fetch('/console/session').then(r => r.json()).then(j => done(j.person))")
    assert status is None
    ended = until(lambda: [r for r in since(served.ledger, start) if "locked" in json.dumps(r["data"])], 20,
                  "the end of the session in the ledger")
    assert "alice" in json.dumps(ended)


def test_an_idle_session_ends_back_at_sign_in_with_the_reason(served: Served, browser: WebDriver) -> None:
    def idle_timeout(value: str) -> None:
        result = CliRunner().invoke(cli, ["--home", str(served.home), "config", "set", "api.session_idle_timeout",
                                          value])
        assert result.exit_code == 0, result.output

    idle_timeout("3")
    try:
        sign_in(browser, served.url, served.token)
        start = head(served.ledger)
        reason = until(lambda: shown(browser, "signin") and browser.find_element(By.ID, "signin-reason").text, 30,
                       "the page to notice the idle session")
        assert reason == "Signed out after 3 seconds without activity."
        assert not browser.find_element(By.ID, "chat").is_displayed()
        until(lambda: [r for r in since(served.ledger, start) if r["kind"] == "session.end"
                       and "idle" in json.dumps(r["data"])], 30, "the idle end in the ledger")
    finally:
        idle_timeout("900")


def test_a_foreign_origin_or_host_is_refused(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        evil = {"Origin": "http://evil.example"}
        refused = client.post("/console/session", json={"token": served.token}, headers=evil)
        assert refused.status_code == 403 and "error" in refused.json()
        assert "set-cookie" not in refused.headers
        signed = client.post("/console/session", json={"token": served.token})
        assert signed.status_code == 200 and signed.json()["person"] == "alice"
        chat = client.post("/api/chat", headers=evil, json={"model": "smollm2-135m", "stream": False,
                                                            "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 403 and "error" in chat.json()
        rebound = client.get("/console/status", headers={"Host": "evil.example"})
        assert rebound.status_code == 403
        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]


def test_no_request_leaves_the_appliance_and_no_console_error(served: Served, browser: WebDriver) -> None:
    sign_in(browser, served.url, served.token)
    turn = ask(browser, "Say hello in French.", length="128")
    receipt_of(browser, turn)
    browser.find_element(By.ID, "show-status").click()
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#status-list [data-field='ledger-seq']"), 30, "the status")
    status = {e.get_attribute("data-field"): e.text
              for e in browser.find_elements(By.CSS_SELECTOR, "#status-list [data-field]")}
    assert status["ledger-seq"].startswith("#") and status["airgap"] not in ("", "—")
    assert "intact" in status["verified"] or "not verified" in status["verified"]
    urls = requested(browser)
    assert any(u.endswith("/console/console.js") for u in urls) and any("/api/chat" in u for u in urls)
    assert {origin(u) for u in urls if not u.startswith("data:")} == {served.url}
    assert severe(browser) == []  # not even a network error: a first visit is answered, not refused


def test_answers_cannot_run_script(served: Served, browser: WebDriver) -> None:
    """The renderer the answers go through, fed markup: it shows it, and builds only its own nodes."""
    sign_in(browser, served.url, served.token)
    hostile = ("Hi <script>window.ran = 1</script> <img src=x onerror='window.ran = 2'>\n"
               "**bold** and *it* and `<b>code</b>`\n\n- one\n- two\n\n3. three\n\n```\n<svg onload=alert(1)>\n```\n"
               "[a link](http://evil.example) ![img](http://evil.example/x.png)")
    tags = browser.execute_async_script("""
        const [source, done] = arguments;
        import('/console/markdown.js').then((m) => {
          const box = document.createElement('div');
          box.append(m.renderMarkdown(source));
          done([box.textContent, [...box.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()),
                window.ran === undefined]);
        });""", hostile)
    text, elements, clean = tags
    assert clean and "<script>window.ran = 1</script>" in text and "<svg onload=alert(1)>" in text
    assert set(elements) <= {"p", "br", "strong", "em", "code", "pre", "ul", "ol", "li"}, elements
    assert {"strong", "em", "code", "pre", "ul", "ol"} <= set(elements)
    assert all(origin(u) == served.url for u in requested(browser) if not u.startswith("data:"))


def test_readable_at_200_percent_zoom_in_a_1024_px_window(served: Served, browser: WebDriver) -> None:
    sign_in(browser, served.url, served.token)
    assert browser.execute_script("return window.innerWidth") == 1024
    overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert browser.execute_script(overflow) <= 0, "the page scrolls sideways at 1024 px"
    # 200% zoom of a 1024 x 800 window: a 512 x 400 CSS-pixel viewport, drawn at twice the size.
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 512, "height": 400, "deviceScaleFactor": 2, "mobile": False})
    until(lambda: browser.execute_script("return window.innerWidth") == 512, 10, "the zoomed viewport")
    assert browser.execute_script(overflow) <= 0, "the page scrolls sideways at 200% zoom"
    send = browser.find_element(By.ID, "send")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", send)
    box = browser.execute_script("const r = arguments[0].getBoundingClientRect(); "
                                 "return [r.left, r.top, r.right, r.bottom, innerWidth, innerHeight, "
                                 "document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2) "
                                 "=== arguments[0]]", send)
    left, top, right, bottom, width, height, on_top = box
    assert send.is_displayed() and 0 <= left < right <= width and 0 <= top < bottom <= height, box
    assert on_top, "something covers the Send button at 200% zoom"
    assert browser.find_element(By.ID, "lock").is_displayed()


def test_screenshots_are_small_pngs(served: Served, browser: WebDriver, tmp_path: Path) -> None:
    """The tool that makes docs/console-*.png works, and its pictures stay well under 500 KB."""
    for picture in take(browser, served.url, served.token, tmp_path):
        data = picture.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 400_000, (picture, len(data))

