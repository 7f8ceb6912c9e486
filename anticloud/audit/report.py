"""The auditor's report: one self-contained HTML page from the answers ``anticloud audit --json`` prints.

`render` is pure: it takes the answers as their ``to_json()`` forms (the very dictionaries the
query commands print), the verifier's verdict and the filter, and returns the page as a string.
So the report cannot show a number the command line would not: every number it shows carries
``data-metric="<summary>.<...>"`` naming where in that JSON it comes from (`metric`).

The page is made to be opened offline and kept: no script, font, image or request of any kind,
which its Content-Security-Policy states (``default-src 'none'``, its one style sheet allowed by
hash); charts are SVG drawn here. Everything that comes from the ledger is escaped (`charts.esc`):
a record's fields are the words of whoever had access to the appliance, never markup.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from anticloud.audit.charts import OUTCOME_COLOURS, STYLE, colour, esc, legend, stacked_bars
from anticloud.audit.result import cell

Doc = Mapping[str, Any]
MAX_ROWS = 1000  # per listing table; the counts above each table are always complete
TIMELINE_ROWS = 300
TIME_COLUMNS = ("time (UTC)", "first", "last")
SECTIONS = (("verification", "Verification"), ("activity", "Activity timeline"), ("people", "Requests per person"),
            ("models", "Requests per model"), ("refusals", "Refusals"), ("airgap", "Air gap"),
            ("config", "Configuration changes"), ("lifecycle", "Models"), ("keys", "Keys and tokens"),
            ("anomalies", "Anomalies"))
OUTCOME_FIELDS = ("completed", "interrupted", "errors", "refused")
USAGE_FIELDS = ("requests", "completed", "interrupted", "errors", "refused", "tokens_in", "tokens_out")


def metric(*parts: object) -> str:
    """The name a test looks a number up by: the summary, then the keys down to it, joined by dots."""
    return ".".join(str(p) for p in parts)


def csp() -> str:
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    return (f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; font-src 'none'; "
            "script-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'")


def num(value: Any, name: str) -> str:
    """A number (or a hash, a status) as shown, tagged with the metric it is."""
    return f'<span data-metric="{esc(name)}">{esc(value)}</span>'


def render(doc: Doc) -> str:
    """The page for ``doc``: {"verdict", "filter", "covers", "results": {name: to_json()}, "generated",
    "version", and "warning" where the chain is broken}."""
    results = doc["results"]
    body = [_header(doc), _banners(doc), _nav(), _verification(doc["verdict"], doc["covers"]),
            _activity(results), _usage(results["people"], "people", "person"),
            _usage(results["models"], "models", "model"), _refusals(results["refusals"]), _airgap(results["airgap"]),
            _config(results["config"]), _lifecycle(results["lifecycle"], "lifecycle", "Models"),
            _lifecycle(results["keys"], "keys", "Keys and tokens"), _anomalies(results["anomalies"])]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{esc(csp())}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Audit report: {esc(doc['verdict'].get('path'))}</title><style>{STYLE}</style></head>"
            "<body>" + "\n".join(body) + "\n</body></html>\n")


def _header(doc: Doc) -> str:
    v, f = doc["verdict"], doc["filter"]
    given = [f"{k} {', '.join(map(str, x)) if isinstance(x, list) else x}" for k, x in f.items() if x not in (None, [])]
    return (f"<header><h1>Audit report</h1><p class=\"meta\">Ledger <span class=\"mono\">{esc(v.get('path'))}</span>"
            f" · ledger id <span class=\"mono\">{esc(v.get('ledger_id'))}</span></p>"
            f"<p class=\"meta\">Made {esc(doc.get('generated'))} by anticloud {esc(doc.get('version'))} · "
            f"filter: {esc('; '.join(given) or 'none (every record)')}</p></header>")


def _banners(doc: Doc) -> str:
    v, results = doc["verdict"], doc["results"]
    out = []
    status = v["verdict"]
    if status == "broken":
        fault = v.get("fault") or {}
        out.append(f'<div class="banner bad" id="unverified"><h2>THIS LEDGER DOES NOT VERIFY</h2>'
                   f"<p>First bad record: seq {num(fault.get('seq'), 'verdict.fault.seq')} "
                   f"({esc(fault.get('reason'))}: {esc(fault.get('detail'))}).</p>"
                   f"<p>{esc(doc.get('warning'))}</p></div>")
    elif status == "torn":
        out.append('<div class="banner warn" id="unverified"><h2>The ledger ends in a torn line</h2><p>A crash cut '
                   "the last append short. Every complete record verified and is counted; the torn bytes are not."
                   "</p></div>")
    elif status != "intact":
        out.append(f'<div class="banner bad" id="unverified"><h2>NOT FULLY VERIFIED ({esc(status)})</h2>'
                   "<p>Signatures were not checked.</p></div>")
    flags = _flags(results)
    if flags:
        items = "".join(f"<li>{text}</li>" for text in flags)
        out.append(f'<div class="banner warn" id="attention"><h2>Needs attention</h2><ul class="counts">{items}</ul>'
                   '<p><a href="#anomalies">Every anomaly, listed</a></p></div>')
    elif status == "intact":
        out.append('<div class="banner good" id="attention"><h2>The ledger verifies, and nothing anomalous was '
                   "recorded</h2></div>")
    return "\n".join(out)


def _flags(results: Doc) -> list[str]:
    """Lines for the top of the page: each anomaly that occurred, with its count."""
    an, air = results["anomalies"], results["airgap"]
    words = {"inference.interrupted": "inference(s) interrupted", "inference.error": "inference(s) ended in error",
             "ledger.recovered": "torn tail(s) recovered", "ledger.outage": "ledger outage(s)",
             "clock.jump": "clock jump(s)", "config.drift": "configuration drift(s): changed outside anticloud",
             "airgap.breach": "air-gap breach(es)", "airgap.unobserved": "span(s) with the air gap unobserved",
             "engine.refused": "engine start(s) refused"}
    flags = [f"{num(n, metric('anomalies', 'counts', name))} {esc(words.get(name, name))}"
             for name, n in an["counts"].items() if n]
    if air["open_breach"]:
        flags.append("the air gap is still <strong>breached</strong> at the end of the ledger")
    return flags


def _nav() -> str:
    items = "".join(f'<li><a href="#{key}">{esc(title)}</a></li>' for key, title in SECTIONS)
    return f"<nav><ol>{items}</ol></nav>"


def _section(key: str, title: str, *parts: str, first: bool = False) -> str:
    cls = ' class="first"' if first else ""
    return f'<section id="{key}"{cls}><h2>{esc(title)}</h2>' + "".join(parts) + "</section>"


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _verification(v: Doc, covers: Doc) -> str:
    head = v.get("head") or {}
    pairs = [("verdict", f"<strong>{num(v['verdict'], 'verdict.verdict')}</strong>"),
             ("records", num(v["records"], "verdict.records")),
             ("span", f"{esc(v.get('first_ts'))} .. {esc(v.get('last_ts'))}"),
             ("head seq", num(head.get("seq"), "verdict.head.seq")),
             ("head hash", f'<span class="mono">{num(head.get("hash"), "verdict.head.hash")}</span>'),
             ("appliance key", f'<span class="mono">{esc(v.get("key_id"))}</span>'),
             ("checkpoints in the ledger", num(v["checkpoints_in_ledger"], "verdict.checkpoints_in_ledger")
              + (", signatures verified" if v.get("signatures_checked") else ", signatures NOT checked")),
             ("your checkpoint", "none given" if not v.get("checkpoint") else
              f"seq {num(v['checkpoint'].get('seq'), 'verdict.checkpoint.seq')} matched")]
    if v.get("torn_tail"):
        torn = v["torn_tail"]
        pairs.append(("torn tail", f"{num(torn['length'], 'verdict.torn_tail.length')} byte(s) at byte "
                                   f"{num(torn['offset'], 'verdict.torn_tail.offset')}"))
    pairs += _seals(v.get("seals"))
    pairs.append(("this report covers", f"records {num(covers['records'], 'covers.records')}"
                  f" (seq 0..{num(covers['last_seq'], 'covers.last_seq')}), of which "
                  f"{num(covers['matched'], 'covers.matched')} matched the filter among those read"))
    return _section("verification", "Verification", _facts(pairs), first=True)


def _seals(s: Doc | None) -> list[tuple[str, str]]:
    if not s:
        return [("seals", "none: no auditor has enrolled, nothing is sealed")]
    through = s.get("sealed_through")
    unsealed = s.get("unsealed") or {}
    tags = "verified" if s.get("tags_checked") else "NOT checked (no seal key given)"
    pairs = [("seals", f"{num(s['seals'], 'verdict.seals.seals')} in "
                       f"{num(s['enrollments'], 'verdict.seals.enrollments')} enrollment(s), tags {tags}"),
             ("sealed through", "nothing yet" if not through else
              f"epoch {esc(through['epoch'])}, seq &le; {num(through['seq'], 'verdict.seals.sealed_through.seq')}"
              f" ({esc(through['ts'])})")]
    if unsealed.get("records"):
        pairs.append(("NOT sealed", f"{num(unsealed['records'], 'verdict.seals.unsealed.records')} record(s), "
                                    f"{esc(unsealed.get('from'))} .. {esc(unsealed.get('until'))}"))
    return pairs + [("note", esc(note)) for note in s.get("notes") or []]


def _activity(results: Doc) -> str:
    per_day: dict[str, dict[str, int]] = {}
    for row in results["people"]["rows"]:
        day = per_day.setdefault(row["day"], dict.fromkeys(("requests", *OUTCOME_FIELDS), 0))
        for field in day:
            day[field] += row[field]
    days = sorted(per_day)
    series = [(name, fill, {d: per_day[d][name] for d in days}, lambda d, n=name: metric("activity", d, n))
              for name, fill in OUTCOME_COLOURS.items()]
    chart = stacked_bars(days, series, "Outcomes per day (UTC): completed, interrupted, errors, refused")
    events = sorted(_events(results), key=lambda e: e[1])
    rows = [(ts, seq, what, person, detail) for ts, seq, what, person, detail in events[:TIMELINE_ROWS]]
    more = f'<p class="none">and {len(events) - TIMELINE_ROWS} more events</p>' if len(events) > TIMELINE_ROWS else ""
    return _section("activity", "Activity timeline",
                    "<h3>Outcomes per day</h3>", legend(list(OUTCOME_COLOURS), list(OUTCOME_COLOURS.values())), chart,
                    "<h3>Events, in ledger order</h3>",
                    _table(("time (UTC)", "seq", "event", "who", "detail"), rows, flag_col=2,
                           flagged=("breach", "config.drift", "interrupted", "error", "recovered", "clock", "outage")),
                    more)


def _events(results: Doc) -> Iterable[tuple[str, int, str, Any, str]]:
    for row in results["config"]["rows"]:
        change = f"{row['key']}: {_short(row['old'])} → {_short(row['new'])}"
        yield row["ts"], row["seq"], row["kind"], row["person"], change
    for row in results["airgap"]["events"]:
        yield row["ts"], row["seq"], f"airgap {row['event']}", row["person"], row["detail"]
    for name in ("lifecycle", "keys"):
        for row in results[name]["events"]:
            if row["event"] in ("load", "unload"):
                continue  # they follow the traffic (keep-alive), and the Models section lists them
            yield row["ts"], row["seq"], row["event"], row["person"], f"{row['subject']}: {row['detail']}"
    for row in results["anomalies"]["rows"]:
        if row["anomaly"] not in ("config.drift", "airgap.breach", "airgap.unobserved", "engine.refused"):
            yield row["ts"], row["seq"], row["anomaly"], row["person"], row["detail"]


def _usage(result: Doc, name: str, by: str) -> str:
    rows = result["rows"]
    days = sorted({r["day"] for r in rows})
    names = sorted({r[by] for r in rows})
    series = [(who, colour(i), {r["day"]: r["requests"] for r in rows if r[by] == who},
               lambda d, w=who: metric(name, w, d, "requests")) for i, who in enumerate(names)]
    chart = stacked_bars(days, series, f"Requests per {by} per day (UTC)")
    head = (("day", by, *USAGE_FIELDS))
    body = "".join(f"<tr><td>{esc(r['day'])}</td><td>{esc(r[by])}</td>"
                   + "".join(f'<td class="num">{num(r[f], metric(name, r[by], r["day"], f))}</td>'
                             for f in USAGE_FIELDS) + "</tr>" for r in rows)
    totals = result["totals"]
    foot = ('<tr><th colspan="2">total</th>'
            + "".join(f'<th class="num">{num(totals[f], metric(name, "totals", f))}</th>' for f in USAGE_FIELDS)
            + "</tr>")
    table = f"<table><thead>{_head(head, numeric=2)}</thead><tbody>{body}</tbody><tfoot>{foot}</tfoot></table>"
    note = (f'<p class="meta">{num(result["unattributed_ends"], metric(name, "unattributed_ends"))} end(s) whose begin '
            "lies outside the filter are not counted in a row.</p>")
    return _section(name, f"Requests per {by} per day", legend(names, [colour(i) for i in range(len(names))]), chart,
                    table if rows else '<p class="none">no requests</p>', note)


def _refusals(result: Doc) -> str:
    kinds = "".join(f"<li>{esc(kind)}: {num(n, metric('refusals', 'by_kind', kind))}</li>"
                    for kind, n in result["by_kind"].items())
    rows = [(r["kind"], r["status"], r["reason"], _Num(r["count"], metric("refusals", "rows", i, "count")),
             ", ".join(r["persons"]) + (", …" if r["more_persons"] else ""), r["first_ts"], r["last_ts"])
            for i, r in enumerate(result["rows"])]
    return _section("refusals", "Refusals",
                    f"<p>{num(result['total'], 'refusals.total')} refusal(s)</p><ul class=\"counts\">{kinds}</ul>",
                    _table(("kind", "status", "reason", "count", "who", "first", "last"), rows))


def _airgap(result: Doc) -> str:
    counts = [("breaches", "breaches"), ("restorations", "restorations"), ("unobserved spans", "unobserved"),
              ("refused starts", "refused_starts"), ("seconds breached", "breached_s")]
    pairs = [(label, num(result[key], metric("airgap", key))) for label, key in counts]
    pairs.append(("breached now", "<strong>yes</strong>" if result["open_breach"] else "no"))
    rows = [(e["ts"], e["seq"], e["event"], e["mode"], e["person"], e["detail"], e["lasted_s"])
            for e in result["events"]]
    return _section("airgap", "Air gap", _facts(pairs),
                    _table(("time (UTC)", "seq", "event", "mode", "who", "detail", "lasted (s)"), rows, flag_col=2,
                           flagged=("breach", "unobserved", "refused_start")))


def _config(result: Doc) -> str:
    rows = [(r["ts"], r["seq"], r["kind"], r["person"], r["key"], _short(r["old"]), _short(r["new"]), r["note"])
            for r in result["rows"]]
    return _section("config", "Configuration changes",
                    f"<p>{num(result['changes'], 'config.changes')} change(s), "
                    f"{num(result['drifts'], 'config.drifts')} drift(s) outside anticloud</p>",
                    _table(("time (UTC)", "seq", "kind", "who", "setting", "old", "new", "note"), rows, flag_col=2,
                           flagged=("config.drift",)))


def _lifecycle(result: Doc, name: str, title: str) -> str:
    counts = "".join(f"<li>{esc(subject)}: "
                     + ", ".join(f"{esc(event)} {num(n, metric(name, 'counts', subject, event))}"
                                 for event, n in events.items()) + "</li>"
                     for subject, events in result["counts"].items())
    rows = [(e["ts"], e["seq"], e["event"], e["subject"], e["person"], e["detail"]) for e in result["events"]]
    return _section(name, title, f'<ul class="counts">{counts}</ul>' if counts else "",
                    _table(("time (UTC)", "seq", "event", "subject", "who", "detail"), rows, flag_col=2,
                           flagged=("rejected", "refused", "revoked")))


def _anomalies(result: Doc) -> str:
    counts = "".join(f"<li>{esc(k)}: {num(n, metric('anomalies', 'counts', k))}</li>"
                     for k, n in result["counts"].items())
    rows = [(r["ts"], r["seq"], r["anomaly"], r["person"], r["model"], r["detail"]) for r in result["rows"]]
    more = "" if result["listed_all"] else \
        '<p class="meta">Only the first ones are listed; the counts are complete.</p>'
    return _section("anomalies", "Anomalies", f"<p>{num(result['total'], 'anomalies.total')} in all</p>",
                    f'<ul class="counts">{counts}</ul>', more,
                    _table(("time (UTC)", "seq", "anomaly", "who", "model", "detail"), rows))


class _Num:
    """A table cell that is a number with a metric."""

    def __init__(self, value: Any, name: str) -> None:
        self.value, self.name = value, name


def _head(columns: Sequence[str], numeric: int | None = None) -> str:
    right = ' class="num"'
    return "<tr>" + "".join(f"<th{right if numeric is not None and i >= numeric else ''}>{esc(c)}</th>"
                            for i, c in enumerate(columns)) + "</tr>"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], flag_col: int | None = None,
           flagged: Sequence[str] = ()) -> str:
    if not rows:
        return '<p class="none">none</p>'

    times = {i for i, c in enumerate(columns) if c in TIME_COLUMNS}

    def td(at: int, value: Any) -> str:
        if isinstance(value, _Num):
            return f'<td class="num">{num(value.value, value.name)}</td>'
        if at in times:
            return f'<td class="ts">{esc(value)}</td>'
        return f'<td class="num">{esc(value)}</td>' if isinstance(value, int | float) else f"<td>{esc(value)}</td>"

    body = []
    for row in rows[:MAX_ROWS]:
        flag = flag_col is not None and any(word in str(row[flag_col]) for word in flagged)
        cells = "".join(td(i, v) for i, v in enumerate(row))
        body.append(f'<tr class="flag">{cells}</tr>' if flag else f"<tr>{cells}</tr>")
    more = (f'<p class="none">and {len(rows) - MAX_ROWS} more rows: ask the command line</p>'
            if len(rows) > MAX_ROWS else "")
    return f"<table><thead>{_head(columns)}</thead><tbody>{''.join(body)}</tbody></table>{more}"


def _short(value: Any, width: int = 80) -> str:
    text = cell(value)
    return text if len(text) <= width else text[:width - 1] + "…"
