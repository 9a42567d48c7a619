"""The trace view: one request's steps as a waterfall, at ``/dashboards/trace/<trace_id>``.

The page reads the steps through the query API's named query ``trace``
(``GET /api/query?name=trace&trace_id=<id>``: the rows of the ``spans``
table, with the caller's own credentials) and draws one bar per span:
indented under its parent, placed and sized by its start and duration
relative to the whole trace, coloured by step (LLM call, tool call,
retrieval, agent, other), failed steps marked. Text from spans is put on
the page as text nodes only, never as markup.

The trace id in the URL is checked before the page is served: 32 hex
digits, not all zero (the W3C trace context form).

>>> parse_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736")
'4bf92f3577b34da6a3ce929d0e0e4736'
>>> parse_trace_id("00000000000000000000000000000000") is None, parse_trace_id("x' OR 1") is None
(True, True)
>>> "4bf92f3577b34da6a3ce929d0e0e4736" in trace_page_html("4bf92f3577b34da6a3ce929d0e0e4736")
True
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from html import escape
from typing import Any

from llmpulse.dashboards.render import CSS

__all__ = ["STEP_COLOURS", "parse_trace_id", "trace_page_html", "trace_route"]

STEP_COLOURS = {"llm": "#7eb26d", "tool": "#eab839", "retrieval": "#6ed0e0",
                "agent": "#1f78c1", "other": "#9a9a9a"}
"""Bar colour per ``spans.step``."""


def parse_trace_id(text: str) -> str | None:
    """The trace id in lowercase hex, or None when ``text`` is not 16 bytes in hex
    (or all zero, the invalid trace id)."""
    if len(text) != 32:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw.hex() if any(raw) else None


_SCRIPT = """
<script>
(function () {
  var tid = %(tid)s, api = %(api)s, colours = %(colours)s;
  var box = document.getElementById("waterfall"), info = document.getElementById("summary");
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function secs(v) { return typeof v === "number" ? v : Date.parse(String(v).replace(" ", "T") + "Z") / 1000; }
  fetch(api + "?name=trace&trace_id=" + encodeURIComponent(tid), {cache: "no-store",
                                                                   credentials: "same-origin"})
    .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
    .then(function (res) {
      var status = res[0], body = res[1];
      if (status !== 200) { throw new Error(body.error || ("HTTP " + status)); }
      var rows = body.rows || [];
      box.setAttribute("data-rows", String(rows.length));
      if (!rows.length) { info.textContent = "No spans stored for this trace (yet)."; return; }
      var t0 = Infinity, t1 = -Infinity, ids = {};
      rows.forEach(function (r) {
        r._s = secs(r.ts); r._e = r._s + (Number(r.duration_ms) || 0) / 1000;
        t0 = Math.min(t0, r._s); t1 = Math.max(t1, r._e); ids[r.span_id] = r;
      });
      var total = Math.max(t1 - t0, 1e-6), children = {}, roots = [];
      rows.forEach(function (r) {
        if (r.parent_span_id && ids[r.parent_span_id]) {
          (children[r.parent_span_id] = children[r.parent_span_id] || []).push(r);
        } else { roots.push(r); }
      });
      var failed = 0, tokens = 0;
      function draw(r, depth) {
        var row = el("div", "step"), label = el("div", "label"), lane = el("div", "lane");
        row.setAttribute("data-step", r.step); row.setAttribute("data-span", r.span_id);
        label.style.paddingLeft = (depth * 14) + "px";
        label.appendChild(el("span", "name", r.name));
        var what = r.tool_name || r.agent_name || r.model || "";
        if (what) { label.appendChild(el("span", "what", " " + what)); }
        var bar = el("div", "bar");
        bar.style.left = ((r._s - t0) / total * 100).toFixed(3) + "%%";
        bar.style.width = Math.max((r._e - r._s) / total * 100, 0.3).toFixed(3) + "%%";
        bar.style.background = colours[r.step] || colours.other;
        if (r.status !== "ok") { bar.className += " failed"; failed += 1; }
        bar.title = r.step + " · " + r.status + (r.error_type ? " (" + r.error_type + ")" : "")
          + " · " + Number(r.duration_ms).toFixed(1) + " ms"
          + (r.input_tokens || r.output_tokens ? " · tokens " + r.input_tokens + " in, "
             + r.output_tokens + " out" : "");
        lane.appendChild(bar);
        lane.appendChild(el("span", "dur", Number(r.duration_ms).toFixed(1) + " ms"));
        row.appendChild(label); row.appendChild(lane); box.appendChild(row);
        tokens += (Number(r.input_tokens) || 0) + (Number(r.output_tokens) || 0);
        (children[r.span_id] || []).forEach(function (c) { draw(c, depth + 1); });
      }
      roots.forEach(function (r) { draw(r, 0); });
      info.textContent = rows.length + " spans · " + (total * 1000).toFixed(1) + " ms · "
        + failed + " failed · " + tokens + " tokens · app " + (rows[0].app || "");
    })
    .catch(function (e) { info.textContent = "query failed: " + e.message;
                          box.setAttribute("data-error", String(e.message)); });
})();
</script>
"""

_TRACE_CSS = """
#waterfall{margin:8px 16px}
.step{display:flex;align-items:center;border-bottom:1px solid #2a2d33;min-height:22px}
.step .label{flex:0 0 34%;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;font-size:12px}
.step .what{color:#9aa0a6}
.step .lane{flex:1;position:relative;height:16px}
.step .bar{position:absolute;top:2px;height:12px;border-radius:2px}
.step .bar.failed{outline:2px solid #e24d42}
.step .dur{position:absolute;right:0;top:0;font-size:11px;color:#9aa0a6}
#summary{margin:8px 16px;color:#c8c9ca}
"""


def trace_page_html(trace_id: str, *, api: str = "/api/query", base: str = "/dashboards") -> str:
    """The trace view page of ``trace_id`` (already checked by :func:`parse_trace_id`)."""
    legend = "".join(f'<span><i style="background:{c}"></i>{escape(s)}</span>'
                     for s, c in STEP_COLOURS.items())
    script = _SCRIPT % {"tid": json.dumps(trace_id), "api": json.dumps(api),
                        "colours": json.dumps(STEP_COLOURS)}
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>trace {escape(trace_id)} · llmpulse</title>"
            f"<style>{CSS}{_TRACE_CSS}</style></head><body>"
            f"<header><h1>Trace {escape(trace_id)}</h1>"
            f'<nav><a href="{escape(base)}/agents">agent traces</a></nav></header>'
            f'<div class="legend">{legend}</div>'
            '<div id="summary">loading…</div><div id="waterfall" data-rows=""></div>'
            f"{script}</body></html>")


Handler = Callable[..., Awaitable[Any]]


def trace_route(base: str = "/dashboards") -> tuple[str, str, Handler]:
    """``(path, view name, handler)`` of the trace view, as :func:`llmpulse.dashboards.web.routes`."""

    async def trace_view(web: Any, request: Any, trace_id: str = "", **_: Any) -> Any:
        tid = parse_trace_id(trace_id)
        if tid is None:
            return web.html("bad request: a trace id is 32 hex digits, not all zero",
                            status=400)
        return web.html(trace_page_html(tid, base=base))

    trace_view.__name__ = "dashboards_trace"
    return base + "/trace/{trace_id}", "llmpulse.dashboards.trace", trace_view
