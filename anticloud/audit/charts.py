"""The report's look: its style sheet, and bar charts drawn as inline SVG on the server.

Pure functions from numbers to markup. Nothing here needs a script, a font, an image or a
style attribute: the report's Content-Security-Policy allows only its one style sheet (by
hash), so colours are SVG presentation attributes and classes, never ``style="..."``.
Every text that reaches the markup goes through `esc`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

PALETTE = ("#1f5f99", "#d9822b", "#2e8b57", "#b03a48", "#7a5195", "#8c6d31", "#3b9ab2", "#c06c84",
           "#5b7553", "#6c757d")
OUTCOME_COLOURS = {"completed": "#2e8b57", "interrupted": "#d9822b", "errors": "#b03a48", "refused": "#7a5195"}
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 900, 240, 44, 52, 12

STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 0 auto; max-width: 1100px; padding: 16px 24px 48px; color: #1d232a; background: #fff; }
h1 { font-size: 24px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 0 0 8px; border-bottom: 2px solid #d8dee4; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
section { margin: 28px 0; }
.meta { color: #57606a; margin: 0; }
.banner { border: 3px solid; border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
.banner h2 { border: 0; margin: 0 0 4px; padding: 0; }
.bad { border-color: #b03a48; background: #fbe9eb; }
.warn { border-color: #d9822b; background: #fdf1e4; }
.good { border-color: #2e8b57; background: #e8f5ee; }
.bad h2 { color: #8a1f2d; } .warn h2 { color: #8a4b0f; } .good h2 { color: #1d5e3a; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.facts dt { color: #57606a; } dl.facts dd { margin: 0; }
.mono, td.mono, dd.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px;
  overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; margin: 6px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e3e7eb; padding: 3px 6px; text-align: left; vertical-align: top;
  overflow-wrap: break-word; }
th { background: #f3f5f7; font-weight: 600; white-space: nowrap; }
td.ts { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flag td { background: #fdf1e4; }
ul.counts { margin: 4px 0; padding-left: 20px; }
.none { color: #57606a; font-style: italic; }
.legend { margin: 2px 0 8px; } .legend span { margin-right: 14px; white-space: nowrap; }
.legend svg { vertical-align: -1px; margin-right: 4px; }
svg.chart { width: 100%; height: auto; display: block; }
svg.chart text { font: 11px system-ui, "DejaVu Sans", sans-serif; fill: #57606a; }
nav ol { columns: 2; margin: 4px 0; }
@page { size: A4; margin: 14mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav { display: none; }
  section { break-before: page; margin: 0; }
  section.first { break-before: auto; }
  tr, .banner, svg.chart { break-inside: avoid; }
  .banner, th, tr.flag td { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""


def esc(value: object) -> str:
    """Any value as text safe inside an element or a quoted attribute."""
    return html.escape("-" if value is None else str(value), quote=True)


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def swatch(fill: str) -> str:
    return f'<svg width="11" height="11" aria-hidden="true"><rect width="11" height="11" fill="{fill}"/></svg>'


def legend(names: Sequence[str], colours: Sequence[str]) -> str:
    items = "".join(f"<span>{swatch(c)}{esc(n)}</span>" for n, c in zip(names, colours, strict=True))
    return f'<div class="legend">{items}</div>'


Series = tuple[str, str, Mapping[str, int], Callable[[str], str]]  # name, colour, count per day, day -> metric


def stacked_bars(days: Sequence[str], series: Sequence[Series], label: str) -> str:
    """One bar per day, stacked from ``series``. Each segment carries the ``data-metric`` its series
    names for the day and ``data-value``, and a title to hover."""
    if not days:
        return '<p class="none">nothing to chart</p>'
    totals = [sum(s[2].get(day, 0) for s in series) for day in days]
    top = max(max(totals), 1)
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    step = plot_w / len(days)
    bar = max(1.0, min(48.0, step * 0.7))
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{esc(label)}">',
             f"<title>{esc(label)}</title>"]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7eb"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick(top * fraction)}</text>')
    every = max(1, round(len(days) / 16))
    for i, day in enumerate(days):
        x = LEFT + step * i + (step - bar) / 2
        y = TOP + plot_h
        for name, fill, counts, metric in series:
            n = counts.get(day, 0)
            if n <= 0:
                continue
            h = plot_h * n / top
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{fill}" '
                         f'data-metric="{esc(metric(day))}" data-value="{n}"><title>{esc(name)}, {esc(day)}: '
                         f"{n}</title></rect>")
        if i % every == 0:
            cx = LEFT + step * i + step / 2
            shown = day[5:] if len(days) > 1 else day  # the year is in the tables
            parts.append(f'<text x="{cx:.1f}" y="{TOP + plot_h + 14}" text-anchor="end" '
                         f'transform="rotate(-35 {cx:.1f} {TOP + plot_h + 14})">{esc(shown)}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#8c959f"/>')
    return "".join(parts) + "</svg>"


def _tick(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"
