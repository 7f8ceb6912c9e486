"""`anticloud audit report`: the page's numbers are the command line's, it is safe to open, and a real
browser renders it offline without a console error, a CSP violation or a single request."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from anticloud.audit import SUMMARIES, Filter, bounds, coverage_for, summarise
from anticloud.audit.anomalies import Anomalies
from anticloud.audit.charts import STYLE
from anticloud.audit.report import SECTIONS, csp, render
from anticloud.cli import cli
from anticloud.home import Home
from ledger import LedgerWriter, verify_file
from tests.audit_ledger import PEOPLE, build
from tests.browser import Page, browser_or_skip

HOSTILE = "<script>alert(1)</script>\"'&</style><img src=x onerror=alert(2)>"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "audit-report.png"


# -- what the page says, read back as a test reads it ------------------------------------------------

class Metrics(HTMLParser):
    """Every ``data-metric`` element's value: its ``data-value``, else its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: dict[str, list[str]] = {}
        self.open: list[tuple[str, str, list[str]]] = []  # (tag, metric, text so far)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if "data-metric" in named:
            if named.get("data-value") is not None:
                self.found.setdefault(named["data-metric"] or "", []).append(named["data-value"] or "")
            else:
                self.open.append((tag, named["data-metric"] or "", []))

    def handle_data(self, data: str) -> None:
        for _, _, text in self.open:
            text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1][0] == tag:
            _, name, text = self.open.pop()
            self.found.setdefault(name, []).append("".join(text))


def metrics(page: str) -> dict[str, list[str]]:
    parser = Metrics()
    parser.feed(page)
    return parser.found


def expected(answers: dict[str, dict[str, Any]]) -> dict[str, str]:
    """What the page must show, named as it names them, from the ``--json`` answers."""
    want: dict[str, str] = {}
    verdict = answers["people"]["verdict"]
    want["verdict.verdict"] = verdict["verdict"]
    want["verdict.records"] = str(verdict["records"])
    want["verdict.head.seq"] = str(verdict["head"]["seq"])
    want["verdict.head.hash"] = verdict["head"]["hash"]
    want["verdict.checkpoints_in_ledger"] = str(verdict["checkpoints_in_ledger"])
    want["covers.records"] = str(answers["people"]["covers"]["records"])
    for name in ("people", "models"):
        result = answers[name]["result"]
        by = result["by"]
        for row in result["rows"]:
            for field in ("requests", "completed", "interrupted", "errors", "refused", "tokens_in", "tokens_out"):
                want[f"{name}.{row[by]}.{row['day']}.{field}"] = str(row[field])
        for field, value in result["totals"].items():
            want[f"{name}.totals.{field}"] = str(value)
    refusals = answers["refusals"]["result"]
    want["refusals.total"] = str(refusals["total"])
    for kind, n in refusals["by_kind"].items():
        want[f"refusals.by_kind.{kind}"] = str(n)
    for i, row in enumerate(refusals["rows"]):
        want[f"refusals.rows.{i}.count"] = str(row["count"])
    airgap = answers["airgap"]["result"]
    for key in ("breaches", "restorations", "unobserved", "refused_starts", "breached_s"):
        want[f"airgap.{key}"] = json.dumps(airgap[key])
    config = answers["config"]["result"]
    want["config.changes"], want["config.drifts"] = str(config["changes"]), str(config["drifts"])
    for name in ("lifecycle", "keys"):
        for subject, events in answers[name]["result"]["counts"].items():
            for event, n in events.items():
                want[f"{name}.counts.{subject}.{event}"] = str(n)
    return want


# -- the page itself, pure ----------------------------------------------------------------------------

def answers_doc(path: Path, query: Filter | None = None) -> dict[str, Any]:
    """What the report command renders, computed here from the library, for the pure tests."""
    verdict = verify_file(path)
    limit = bounds(verdict)
    coverage = coverage_for(verdict, limit)
    summaries = {name: make() for name, make in SUMMARIES.items()}
    anomalies = Anomalies()
    summarise(path, query or Filter(), [*summaries.values(), anomalies], limit, coverage)
    results = {name: s.result().to_json() for name, s in summaries.items()}
    results["anomalies"] = anomalies.result().to_json()
    return {"verdict": verdict.to_json(), "filter": (query or Filter()).to_json(), "covers": coverage.to_json(),
            "results": results, "generated": "2026-12-04T00:00:00.000000Z", "version": "test"}


def hostile_ledger(make_ledger: Callable[..., Any]) -> Path:
    """A ledger whose every free text is markup that would run, or break out, if it were not escaped."""
    made = make_ledger(0)
    with LedgerWriter.open(made.path) as writer:
        actor = {"uid": 1000, "user": HOSTILE}
        writer.append("config.change", {"key": HOSTILE, "old": HOSTILE, "new": {"x": HOSTILE}, "why": HOSTILE,
                                        "actor": actor})
        writer.append("inference.begin", {"id": "i1", "model": HOSTILE, "client": f"token:{HOSTILE}"})
        writer.append("inference.end", {"id": "i1", "done_reason": HOSTILE, "prompt_tokens": 3})
        writer.append("request.rejected", {"identity": f"token:{HOSTILE}", "status": 401, "reason": HOSTILE})
        writer.append("airgap.breach", {"mode": HOSTILE, "airgap": {"interfaces": [{"name": HOSTILE}]},
                                        "actor": actor})
        writer.append("model.load.refused", {"name": HOSTILE, "reason": HOSTILE, "actor": actor})
    path: Path = made.path
    return path


def test_every_text_from_the_ledger_is_escaped(make_ledger: Callable[..., Any]) -> None:
    page = render(answers_doc(hostile_ledger(make_ledger)))
    assert "<script" not in page.lower() and "<img" not in page.lower(), "markup from the ledger became markup"
    assert page.count("</style>") == 1, "a ledger text closed the style sheet"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;&lt;/style&gt;" in page
    tags = Tags()
    tags.feed(page)
    assert tags.found <= ALLOWED_TAGS and tags.attributes <= ALLOWED_ATTRIBUTES, "markup a text smuggled in"


ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "span", "div",
                "ul", "ol", "li", "a", "nav", "section", "dl", "dt", "dd", "strong", "table", "thead", "tbody",
                "tfoot", "tr", "th", "td", "svg", "rect", "line", "text"}
ALLOWED_ATTRIBUTES = {"lang", "charset", "http-equiv", "content", "name", "class", "id", "href", "data-metric",
                      "data-value", "viewbox", "role", "aria-label", "aria-hidden", "x", "y", "x1", "x2", "y1", "y2",
                      "width", "height", "fill", "stroke", "text-anchor", "transform", "colspan"}


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.add(tag)
        self.attributes.update(name for name, _ in attrs)
        for name, value in attrs:
            assert name != "href" or (value or "").startswith("#"), "links stay within the page"


def test_the_policy_allows_only_the_pages_own_style_sheet(make_ledger: Callable[..., Any]) -> None:
    page = render(answers_doc(make_ledger(3).path))
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert policy is not None and policy.group(1).replace("&#x27;", "'") == csp()
    assert csp().startswith("default-src 'none'; ") and "unsafe" not in csp()
    assert re.findall(r"<style>(.*?)</style>", page, re.S) == [STYLE], "one style sheet, the one hashed"
    for forbidden in ("<script", "<link", "<img", "<iframe", "url(", "@import", "http://", "https://", " src="):
        assert forbidden not in page, forbidden


def test_an_unverified_ledger_says_so_before_anything_else(make_ledger: Callable[..., Any]) -> None:
    made = make_ledger(6)
    lines = made.path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"i":3', b'"i":4')
    made.path.write_bytes(b"".join(lines))
    page = render(answers_doc(made.path))
    banner = page.index("THIS LEDGER DOES NOT VERIFY")
    assert banner < page.index('id="verification"') and banner < page.index("<nav>")
    assert metrics(page)["verdict.fault.seq"] == ["4"] and metrics(page)["covers.records"] == ["4"]
    intact = render(answers_doc(make_ledger(2).path))
    assert "DOES NOT VERIFY" not in intact and "nothing anomalous was recorded" in intact


# -- the real appliance's ledger, the real CLI, a real browser -------------------------------------------

@pytest.fixture
def appliance_ledger(imported_home: Callable[..., Home], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A copy, away from the appliance, of five days of its ledger (their dates beside it, in days.json)."""
    home = imported_home("tiny", "other")
    with monkeypatch.context() as patched:
        days = build(patched, home, tmp_path / "api.sock")
    copy = tmp_path / "auditor" / "ledger.jsonl"
    copy.parent.mkdir()
    shutil.copyfile(home.ledger, copy)
    (tmp_path / "days.json").write_text(json.dumps(days))
    return copy


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--home", "/nonexistent/home", *args])
    return result.exit_code, result.output


def answers(ledger: Path, *filters: str) -> dict[str, dict[str, Any]]:
    found = {}
    for name in SUMMARIES:
        code, output = run("audit", name, "--ledger", str(ledger), "--json", *filters)
        assert code == 0, output
        found[name] = json.loads(output)
    return found


def listed(ledger: Path, *filters: str) -> int:
    code, output = run("audit", "records", "--ledger", str(ledger), "--json", *filters)
    assert code == 0, output
    return len(json.loads(output)["records"])


@pytest.fixture(scope="module")
def chromium() -> str:
    return browser_or_skip()


@pytest.fixture
def opened(chromium: str) -> Iterator[Callable[[Path], Page]]:
    pages: list[Page] = []

    def open_page(path: Path) -> Page:
        page = Page(chromium).__enter__()
        pages.append(page)
        page.load(path.as_uri())
        return page

    yield open_page
    for page in pages:
        page.close()


def test_the_browser_shows_the_numbers_the_command_line_prints(appliance_ledger: Path, tmp_path: Path,
                                                                opened: Callable[[Path], Page]) -> None:
    out = tmp_path / "report.html"
    code, output = run("audit", "report", "--ledger", str(appliance_ledger), "--out", str(out))
    assert code == 0 and "INTACT" in output and f"wrote {out}" in output, output
    page = opened(out)
    assert page.problems() == [], "the page rendered with console errors or CSP violations"
    assert page.requests() == [out.as_uri()], "the page asked for something beyond itself"
    shown = metrics(page.html())
    want = expected(answers(appliance_ledger))
    assert set(want) <= set(shown), f"numbers missing from the page: {sorted(set(want) - set(shown))[:10]}"
    wrong = {name: (shown[name], value) for name, value in want.items() if set(shown[name]) != {value}}
    assert wrong == {}, "the page and `audit --json` disagree"
    # The realistic ledger has what a report must flag, and each count is one `audit records` lists.
    people = answers(appliance_ledger)["people"]["result"]
    assert {row["person"] for row in people["rows"]} >= set(PEOPLE) and len({r["day"] for r in people["rows"]}) == 4
    for name, filters in (("inference.interrupted", ["--outcome", "interrupted"]), ("ledger.recovered",
                          ["--kind", "ledger.recovered"]), ("config.drift", ["--kind", "config.drift"]),
                          ("airgap.breach", ["--kind", "airgap.breach"])):
        assert set(shown[f"anomalies.counts.{name}"]) == {str(listed(appliance_ledger, *filters))} != {"0"}, name
    chart = [name for name in shown if name.startswith("people.") and name.count(".") == 3]
    assert chart, "the per-person chart's bars carry their numbers"
    pdf = page.pdf()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) >= len(SECTIONS) - 1, \
        "printing gives a page per section"


def test_filters_narrow_the_report_as_they_narrow_the_answers(appliance_ledger: Path, tmp_path: Path) -> None:
    out = tmp_path / "alice.html"
    day = json.loads((tmp_path / "days.json").read_text())[1]
    code, output = run("audit", "report", "--ledger", str(appliance_ledger), "--out", str(out), "--person", "alice",
                       "--since", day, "--until", day)
    assert code == 0, output
    shown = metrics(out.read_text())
    want = expected(answers(appliance_ledger, "--person", "alice", "--since", day, "--until", day))
    assert want[f"people.alice.{day}.requests"] == "3"
    assert {name: set(shown.get(name, ())) for name in want} == {name: {value} for name, value in want.items()}
    assert not any(name.startswith("people.bob.") for name in shown)


def test_a_hostile_ledger_renders_as_text_with_nothing_run(make_ledger: Callable[..., Any], tmp_path: Path,
                                                           opened: Callable[[Path], Page]) -> None:
    out = tmp_path / "hostile.html"
    code, output = run("audit", "report", "--ledger", str(hostile_ledger(make_ledger)), "--out", str(out))
    assert code == 0, output
    page = opened(out)
    assert page.problems() == [] and page.requests() == [out.as_uri()]
    text = page.send("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True})
    assert HOSTILE in text["result"]["value"], "the text shows as the ledger wrote it"
    scripts = page.send("Runtime.evaluate", {"expression": "document.scripts.length + document.images.length",
                                             "returnByValue": True})
    assert scripts["result"]["value"] == 0


def test_the_harness_sees_what_it_must_refuse(tmp_path: Path, opened: Callable[[Path], Page]) -> None:
    """The browser checks above can fail: a page breaking its policy is caught, request and all."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'\">"
                   '<style>b{}</style><img src="http://192.0.2.1/x.png"><script>console.error(1)</script>')
    page = opened(bad)
    assert any("Content Security Policy" in p for p in page.problems())
    assert "http://192.0.2.1/x.png" in page.requests()


def test_a_broken_copy_gives_a_report_that_says_so_and_exits_1(appliance_ledger: Path, tmp_path: Path) -> None:
    lines = appliance_ledger.read_bytes().splitlines(keepends=True)
    lines[20] = lines[20].replace(b'"seq":20', b'"seq":21')
    appliance_ledger.write_bytes(b"".join(lines))
    out = tmp_path / "broken.html"
    code, output = run("audit", "report", "--ledger", str(appliance_ledger), "--out", str(out))
    assert code == 1 and "WARNING: ANSWER FROM A LEDGER THAT DOES NOT VERIFY" in output
    page = out.read_text()
    assert page.index("THIS LEDGER DOES NOT VERIFY") < page.index('id="verification"')
    assert metrics(page)["covers.records"] == ["20"]


def test_bad_input_is_one_line_and_the_ledger_is_never_overwritten(appliance_ledger: Path) -> None:
    before = appliance_ledger.read_bytes()
    code, output = run("audit", "report", "--ledger", str(appliance_ledger), "--out", str(appliance_ledger))
    assert code == 2 and output.strip().splitlines()[-1].startswith("anticloud: error: --out")
    assert appliance_ledger.read_bytes() == before
    code, output = run("audit", "report", "--ledger", str(appliance_ledger), "--out", "/nonexistent/dir/r.html")
    assert code == 1 and "Traceback" not in output and "anticloud: error:" in output
    code, output = run("audit", "report", "--ledger", str(appliance_ledger), "--out", "r.html", "--since", "soon")
    assert code == 2 and "'soon' is neither a date" in output


def test_screenshot_of_a_realistic_report(appliance_ledger: Path, tmp_path: Path,
                                          opened: Callable[[Path], Page]) -> None:
    """Renders the README's picture; ANTICLOUD_UPDATE_SCREENSHOT=1 writes it to docs/audit-report.png."""
    out = tmp_path / "report.html"
    assert run("audit", "report", "--ledger", str(appliance_ledger), "--out", str(out))[0] == 0
    shot = tmp_path / "audit-report.png"
    opened(out).screenshot(shot, height=2600)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
    if os.environ.get("ANTICLOUD_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)
    assert SCREENSHOT.exists() and SCREENSHOT.stat().st_size < 500_000, "docs/audit-report.png is kept small"


def test_anomalies_are_counted_in_full_and_listed_up_to_a_bound(make_ledger: Callable[..., Any]) -> None:
    made = make_ledger(0)
    with LedgerWriter.open(made.path) as writer:
        for i in range(5):
            writer.append("inference.begin", {"id": f"i{i}", "model": "tiny", "client": "token:alice"})
            writer.append("inference.end", {"id": f"i{i}", "done_reason": "stop" if i % 2 else "client_disconnected"})
        writer.append("inference.end", {"id": "i9", "done_reason": "error", "error": "boom"})
        writer.append("clock.jump", {"delta_ms": -3600000})
        writer.append("ledger.outage", {"reason": "disk full"})
    anomalies, verdict = Anomalies(max_rows=2), verify_file(made.path)
    limit = bounds(verdict)
    summarise(made.path, Filter(), [anomalies], limit, coverage_for(verdict, limit))
    found = anomalies.result()
    assert {k: n for k, n in found.counts.items() if n} == {"inference.interrupted": 3, "inference.error": 1,
                                                            "clock.jump": 1, "ledger.outage": 1}
    assert len(found.rows) == 2 and not found.listed_all and found.rows[0].person == "alice"
    doc = answers_doc(made.path)
    page = render({**doc, "results": {**doc["results"], "anomalies": found.to_json()}})
    assert "1</span> clock jump(s)" in page and "Only the first ones are listed" in page
