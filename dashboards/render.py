"""Server-side rendering of panel results: SVG charts, HTML tables, stats.

No JavaScript library and no external URL: the embedded page and the HTML
report both embed what this module returns. Every text coming from the data
(model names, response sentences) is escaped.

>>> from llmpulse.dashboards.panels import DASHBOARDS
>>> p = DASHBOARDS["overview"].panel(6)
>>> rows = [{"time": "2023-11-14 22:13:20", "series": "m p95_ms", "value": 120.0},
...         {"time": "2023-11-14 22:13:50", "series": "m p95_ms", "value": 180.0}]
>>> html = render_panel(p, rows, start=1_699_999_990, end=1_700_000_060)
>>> html.startswith('<div class="pbody" data-kind="timeseries" data-rows="2" data-series="1">')
True
>>> "<polyline" in html, "m p95_ms" in html
(True, True)
>>> format_value(0.0123, "percentunit"), format_value(1234.5, "ms"), format_value(2.5e6, "short")
('1.23%', '1.23 s', '2.5M')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from llmpulse.dashboards.panels import Panel

__all__ = ["CSS", "PALETTE", "format_value", "render_panel", "render_svg", "to_epoch"]

PALETTE = ("#3274d9", "#e0752d", "#56a64b", "#c4162a", "#8f3bb8", "#37872d", "#fade2a",
           "#1f60c4", "#ff7383", "#8ab8ff", "#ca95e5", "#b877d9")
MAX_SERIES = 12
MAX_TABLE_ROWS = 100

CSS = """
:root{--bg:#111217;--panel:#181b1f;--fg:#d8d9da;--muted:#8e8e8e;--grid:#2c3235;--accent:#3274d9}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:13px/1.4 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
header{padding:10px 16px;border-bottom:1px solid var(--grid);display:flex;flex-wrap:wrap;gap:12px;align-items:center}
header h1{font-size:17px;margin:0 12px 0 0}
header a{color:var(--fg);text-decoration:none;padding:3px 8px;border-radius:3px}
header a.on,header a:hover{background:var(--grid)}
form.vars{display:flex;gap:8px;flex-wrap:wrap;align-items:center;padding:8px 16px;color:var(--muted)}
form.vars select,form.vars input{background:var(--panel);color:var(--fg);border:1px solid var(--grid);padding:2px 4px}
.grid{display:grid;grid-template-columns:repeat(24,1fr);gap:8px;padding:8px 16px}
.panel{background:var(--panel);border:1px solid var(--grid);border-radius:3px;padding:6px 8px;min-width:0;overflow:hidden}
.panel:target{border-color:var(--accent);box-shadow:0 0 0 2px var(--accent)}
.panel h3{font-size:13px;margin:0 0 4px;font-weight:600}
.panel .desc{color:var(--muted);font-size:11px;margin:0 0 4px}
.pbody{overflow:auto;max-height:420px}
svg.chart{width:100%;height:auto;display:block}
svg.chart text{fill:var(--muted);font-size:10px}
svg.chart .gl{stroke:var(--grid);stroke-width:1}
.legend{display:flex;flex-wrap:wrap;gap:2px 10px;font-size:11px;color:var(--fg)}
.legend i{display:inline-block;width:10px;height:3px;margin-right:4px;vertical-align:middle}
table.data{border-collapse:collapse;width:100%;font-size:12px}
table.data th{text-align:left;color:var(--muted);font-weight:600;border-bottom:1px solid var(--grid);padding:3px 6px;position:sticky;top:0;background:var(--panel)}
table.data td{border-bottom:1px solid var(--grid);padding:3px 6px;vertical-align:top;max-width:420px;overflow-wrap:anywhere}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.stat{font-size:34px;font-weight:600;color:#73bf69;padding:8px 4px}
.nodata{color:var(--muted);padding:24px;text-align:center}
.err{color:#ff7383;padding:8px}
footer{color:var(--muted);padding:8px 16px;font-size:11px}
"""


def to_epoch(value: Any) -> float | None:
    """Epoch seconds from a store time value (``YYYY-MM-DD hh:mm:ss[.fff]``, ISO, number)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) / 1000.0 if value > 1e11 else float(value)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def _short(v: float) -> str:
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def format_value(v: Any, unit: str = "") -> str:
    """A number as a person reads it, in the panel's Grafana unit."""
    f = _num(v)
    if f is None:
        return "–" if v is None else str(v)
    if unit == "percentunit":
        return f"{f * 100:.3g}%"
    if unit == "ms":
        return f"{f / 1000:.3g} s" if abs(f) >= 1000 else f"{f:.3g} ms"
    if unit == "currencyUSD":
        return f"${f:,.2f}" if abs(f) >= 1 else f"${f:.3g}"
    if unit == "reqps":
        return f"{_short(f)} req/s"
    return _short(f)


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _time_label(t: float, span: float) -> str:
    dt = datetime.fromtimestamp(t, UTC)
    if span > 2 * 86400:
        return dt.strftime("%m-%d %H:%M")
    return dt.strftime("%H:%M:%S" if span < 600 else "%H:%M")


def _series(panel: Panel, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    cols = [c for c in rows[0] if c != "time"] if rows else []
    labels = [c for c in cols if any(isinstance(r.get(c), str) for r in rows)]
    values = [c for c in cols if c not in labels]
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        t = to_epoch(r.get("time"))
        if t is None:
            continue
        label = " ".join(str(r.get(c, "")) for c in labels)
        for c in values:
            v = _num(r.get(c))
            if v is None:
                continue
            key = (f"{label} {c}" if label else c) if len(values) > 1 else (label or c)
            out.setdefault(key, []).append((t, v))
    return out


def _chart_svg(panel: Panel, series: dict[str, list[tuple[float, float]]],
               start: float, end: float) -> tuple[str, list[tuple[str, str]]]:
    w, h, ml, mr, mt, mb = max(320, 53 * panel.width), 220, 58, 10, 8, 22
    names = sorted(series, key=lambda k: -max(abs(v) for _, v in series[k]))[:MAX_SERIES]
    names.sort()
    vals = [v for k in names for _, v in series[k]]
    if panel.threshold_line is not None:
        vals.append(panel.threshold_line)  # the alert line stays in view
    lo, hi = min(0.0, min(vals)), max(0.0, max(vals))
    if hi == lo:
        hi = lo + 1.0
    yticks = _nice_ticks(lo, hi)
    lo, hi = min(lo, yticks[0]), max(hi, yticks[-1])
    t0, t1 = start, max(end, start + 1.0)

    def x(t: float) -> float:
        return ml + (t - t0) / (t1 - t0) * (w - ml - mr)

    def y(v: float) -> float:
        return mt + (hi - v) / (hi - lo) * (h - mt - mb)

    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" '
             f'role="img" aria-label="{escape(panel.title)}">']
    for v in yticks:
        yy = y(v)
        parts.append(f'<line class="gl" x1="{ml}" x2="{w - mr}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        parts.append(f'<text x="{ml - 4}" y="{yy + 3:.1f}" text-anchor="end">'
                     f'{escape(format_value(v, panel.unit))}</text>')
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(f'<text x="{x(t):.1f}" y="{h - 6}" text-anchor="{anchor}">'
                     f'{_time_label(t, t1 - t0)}</text>')
    if panel.threshold_line is not None:
        yy = y(panel.threshold_line)
        parts.append(f'<line class="threshold" x1="{ml}" x2="{w - mr}" y1="{yy:.1f}" '
                     f'y2="{yy:.1f}" stroke="#c4162a" stroke-width="1.5" stroke-dasharray="6 4">'
                     f'<title>threshold {escape(format_value(panel.threshold_line))}</title></line>')
    legend = []
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        pts = sorted(p for p in series[name] if t0 <= p[0] <= t1)
        if not pts:
            continue
        title = f"<title>{escape(name)}</title>"
        if len(pts) == 1:
            parts.append(f'<circle cx="{x(pts[0][0]):.1f}" cy="{y(pts[0][1]):.1f}" r="3" '
                         f'fill="{color}">{title}</circle>')
        else:
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                         f'points="{coords}">{title}</polyline>')
        legend.append((name, color))
    parts.append("</svg>")
    return "".join(parts), legend


def _legend(items: list[tuple[str, str]], hidden: int) -> str:
    spans = "".join(f'<span><i style="background:{c}"></i>{escape(n)}</span>' for n, c in items)
    more = f"<span>+{hidden} more</span>" if hidden > 0 else ""
    return f'<div class="legend">{spans}{more}</div>'


def _table(panel: Panel, rows: Sequence[Mapping[str, Any]]) -> str:
    cols = list(rows[0].keys())
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = []
    for r in rows[:MAX_TABLE_ROWS]:
        cells = []
        for c in cols:
            v = r.get(c)
            if _num(v) is not None:
                text = f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
                cells.append(f'<td class="num">{escape(text)}</td>')
            else:
                text = "" if v is None else str(v)
                short = text if len(text) <= 200 else text[:199] + "…"
                cells.append(f'<td title="{escape(text)}">{escape(short)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = ""
    if len(rows) > MAX_TABLE_ROWS:
        more = f'<tr><td colspan="{len(cols)}">… {len(rows) - MAX_TABLE_ROWS} more rows</td></tr>'
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}{more}</tbody></table>'


def _bars(panel: Panel, rows: Sequence[Mapping[str, Any]]) -> str:
    cat, val = panel.columns[0], panel.columns[1]
    items = [(str(r.get(cat)), _num(r.get(val)) or 0.0) for r in rows]
    w, h, ml, mb, mt = max(320, 53 * panel.width), 200, 46, 22, 8
    top = max([v for _, v in items] + [1.0])
    ticks = _nice_ticks(0.0, top)
    top = max(top, ticks[-1])
    bw = (w - ml - 8) / max(len(items), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {w} {h}" '
             f'role="img" aria-label="{escape(panel.title)}">']
    for t in ticks:
        yy = mt + (1 - t / top) * (h - mt - mb)
        parts.append(f'<line class="gl" x1="{ml}" x2="{w - 8}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
                     f'<text x="{ml - 4}" y="{yy + 3:.1f}" text-anchor="end">{escape(format_value(t, panel.unit))}</text>')
    for i, (name, v) in enumerate(items):
        bh = v / top * (h - mt - mb)
        xx = ml + i * bw
        parts.append(f'<rect x="{xx + bw * 0.1:.1f}" y="{h - mb - bh:.1f}" width="{bw * 0.8:.1f}" '
                     f'height="{bh:.1f}" fill="{PALETTE[0]}"><title>{escape(name)}: '
                     f'{escape(format_value(v))}</title></rect>'
                     f'<text x="{xx + bw / 2:.1f}" y="{h - 6}" text-anchor="middle">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_panel(panel: Panel, rows: Sequence[Mapping[str, Any]], *, start: float,
                 end: float, error: str | None = None) -> str:
    """The HTML fragment of one panel body (``data-rows`` tells how many rows it shows)."""
    n = 0 if error else len(rows)
    extra = ""
    if error:
        inner = f'<div class="err">query failed: {escape(error)}</div>'
    elif not rows:
        inner = '<div class="nodata">No data in this time range</div>'
    elif panel.kind == "timeseries":
        series = _series(panel, rows)
        if series:
            svg, legend = _chart_svg(panel, series, start, end)
            inner = svg + _legend(legend, max(0, len(series) - MAX_SERIES))
        else:
            inner, n = '<div class="nodata">No data in this time range</div>', 0
        extra = f' data-series="{len(series)}"'
    elif panel.kind == "stat":
        inner = f'<div class="stat">{escape(format_value(rows[0].get("value"), panel.unit))}</div>'
    elif panel.kind == "barchart":
        inner = _bars(panel, rows)
    else:
        inner = _table(panel, rows)
    return f'<div class="pbody" data-kind="{panel.kind}" data-rows="{n}"{extra}>{inner}</div>'


def render_svg(panel: Panel, rows: Sequence[Mapping[str, Any]], *, start: float,
               end: float) -> str | None:
    """A standalone SVG image of a chart or stat panel (None for tables)."""
    if panel.kind == "table":
        return None
    ns = '<svg xmlns="http://www.w3.org/2000/svg" '
    if panel.kind == "barchart" and rows:
        return _bars(panel, rows).replace("<svg ", ns, 1)
    if panel.kind == "timeseries" and rows:
        series = _series(panel, rows)
        if series:
            return _chart_svg(panel, series, start, end)[0].replace("<svg ", ns, 1)
    text = format_value(rows[0].get("value"), panel.unit) if rows and panel.kind == "stat" \
        else "No data"
    return (f'<svg class="chart" viewBox="0 0 320 80" xmlns="http://www.w3.org/2000/svg">'
            f'<text x="160" y="50" text-anchor="middle" font-size="28" fill="#73bf69">'
            f"{escape(text)}</text></svg>")
