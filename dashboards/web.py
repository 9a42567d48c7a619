"""The embedded live dashboard: the Grafana panels, served by llmpulse itself.

``routes(query)`` gives the views to mount on the Faust web server (or on a
plain aiohttp app with :func:`aiohttp_app`):

* ``GET /dashboards`` — the list of dashboards;
* ``GET /dashboards/{name}`` — one dashboard; the page fetches each panel
  body from the next route and refreshes it every ``refresh`` seconds;
* ``GET /dashboards/{name}/panel/{id}`` — one panel body (HTML fragment),
  ``{id}.svg`` the chart alone, ``{id}.json`` the rows.

Query string (same names as Grafana's, so :func:`llmpulse.dashboards.grafana.panel_url`
links work for both): ``from``/``to`` (``now-1h``, epoch s or ms, ISO 8601,
or ``from=data`` for the span of the stored events), ``var-app``,
``var-model``, ``var-version`` (``var-model_version`` is taken as its alias),
``var-signal``, ``var-dimension``, ``var-prompt_version``, ``var-experiment``
(repeatable; absent = All), ``refresh`` (s). The fragment ``#panel-<id>`` opens (scrolls to and outlines) one panel.
``GET /dashboards`` with ``var-signal`` in its query string (the alert links
of older versions) redirects to the panel that shows that signal.
``GET /dashboards/runbooks`` is the shipped runbooks page
(:mod:`llmpulse.dashboards.runbooks`); with ``reports_dir``, ``GET
/dashboards/reports/<file>.html`` serves a drift report from that folder in a
sandbox (the report's scripts run in an origin of their own, with no access
to the session or the API).

``query(sql, params)`` is a blocking callable returning rows as dicts (the
store read with ``readonly=1``); views run it in a thread.

>>> ctx = Context.from_query({"from": "now-2h", "to": "now", "var-model": ["m"]},
...                          now=1_700_007_200.0)
>>> ctx.start, ctx.end, ctx.variables
(1700000000.0, 1700007200.0, {'model': ['m']})
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlencode

from llmpulse.dashboards.macros import MacroError, expand, parse_time
from llmpulse.dashboards.panels import DASHBOARDS, Dashboard, Panel, panel_for_signal
from llmpulse.dashboards.render import CSS, render_panel, render_svg
from llmpulse.dashboards.runbooks import runbooks_html
from llmpulse.dashboards.trace import trace_route

__all__ = [
    "Context",
    "QueryFn",
    "REPORT_CSP",
    "aiohttp_app",
    "data_span",
    "grid_html",
    "legacy_link_target",
    "page_html",
    "report_file",
    "panel_body",
    "panel_rows",
    "routes",
]

QueryFn = Callable[[str, Mapping[str, Any]], list[dict[str, Any]]]
Handler = Callable[..., Awaitable[Any]]

DEFAULT_FROM = "now-1h"
DEFAULT_REFRESH_S = 10
_VARS = ("app", "model", "version", "signal", "dimension", "prompt_version", "experiment")
_ALIASES = {"model_version": "version"}  # alert links of older versions


def data_span(query: QueryFn) -> tuple[float, float] | None:
    """(first, last) event time of ``inference_events`` in epoch seconds, or None when empty."""
    rows = query(
        "SELECT count() AS n, toUnixTimestamp64Milli(min(ts)) AS lo, "
        "toUnixTimestamp64Milli(max(ts)) AS hi FROM inference_events", {})
    if not rows or not rows[0].get("n"):
        return None
    return float(rows[0]["lo"]) / 1000.0, float(rows[0]["hi"]) / 1000.0


@dataclass(frozen=True)
class Context:
    """Time range and variables of one page view (what the query string says)."""

    start: float
    end: float
    variables: dict[str, list[str]] = field(default_factory=dict)
    raw_from: str = DEFAULT_FROM
    raw_to: str = "now"
    refresh_s: int = DEFAULT_REFRESH_S

    @classmethod
    def from_query(cls, q: Mapping[str, str | Sequence[str]], *, now: float | None = None,
                   query: QueryFn | None = None) -> Context:
        def one(key: str, default: str) -> str:
            v = q.get(key)
            if v is None:
                return default
            return v if isinstance(v, str) else (v[-1] if v else default)

        def many(key: str) -> list[str]:
            v = q.get(key)
            vals = [] if v is None else [v] if isinstance(v, str) else list(v)
            return [x for x in vals if x and x not in ("All", "$__all")]

        raw_from, raw_to = one("from", DEFAULT_FROM), one("to", "now")
        now = time.time() if now is None else now
        if raw_from == "data":
            span = data_span(query) if query is not None else None
            start, end = span if span else (now - 3600.0, now)
            end = max(end, start + 1.0)
        else:
            start, end = parse_time(raw_from, now), parse_time(raw_to, now)
        if end <= start:
            raise MacroError(f"time range: from ({raw_from}) must be before to ({raw_to})")
        try:
            refresh = max(0, int(one("refresh", str(DEFAULT_REFRESH_S))))
        except ValueError:
            raise MacroError("refresh: seconds between updates, 0 for none") from None
        variables = {name: many(f"var-{name}") for name in _VARS}
        for alias, name in _ALIASES.items():
            variables[name] += [v for v in many(f"var-{alias}") if v not in variables[name]]
        return cls(start, end, {k: v for k, v in variables.items() if v}, raw_from, raw_to,
                   refresh)

    def query_string(self) -> str:
        pairs = [("from", self.raw_from), ("to", self.raw_to)]
        for name, vals in self.variables.items():
            pairs += [(f"var-{name}", v) for v in vals]
        return urlencode(pairs)


def panel_rows(query: QueryFn, panel: Panel, ctx: Context) -> list[dict[str, Any]]:
    """Run one panel's SQL (macros expanded) for the context."""
    sql = expand(panel.sql, start=ctx.start, end=ctx.end, variables=ctx.variables)
    return query(sql, {})


def panel_body(query: QueryFn, panel: Panel, ctx: Context) -> str:
    """The rendered body of one panel; a failed query renders as its error, not an exception."""
    try:
        rows = panel_rows(query, panel, ctx)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return render_panel(panel, [], start=ctx.start, end=ctx.end, error=msg)
    return render_panel(panel, rows, start=ctx.start, end=ctx.end)


def _fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _options(query: QueryFn, d: Dashboard) -> dict[str, list[str]]:
    out = {}
    for v in d.variables:
        try:
            out[v.name] = [str(r.get("value")) for r in query(v.sql, {})]
        except Exception:
            out[v.name] = []
    return out


def _nav(current: str, base: str, qs: str) -> str:
    links = []
    for name, d in DASHBOARDS.items():
        cls = ' class="on"' if name == current else ""
        links.append(f'<a{cls} href="{base}/{name}?{escape(qs)}">{escape(d.title)}</a>')
    return "".join(links)


def _form(d: Dashboard, ctx: Context, options: Mapping[str, list[str]]) -> str:
    parts = [f'<label>from <input name="from" size="14" value="{escape(ctx.raw_from)}"></label>',
             f'<label>to <input name="to" size="14" value="{escape(ctx.raw_to)}"></label>']
    for v in d.variables:
        chosen = ctx.variables.get(v.name, [])
        opts = ['<option value="">All</option>']
        known = list(options.get(v.name, []))
        for value in known + [c for c in chosen if c not in known]:  # a link's value stays shown
            sel = " selected" if value in chosen else ""
            opts.append(f'<option{sel} value="{escape(value)}">{escape(value)}</option>')
        parts.append(f'<label>{escape(v.label)} <select name="var-{v.name}">{"".join(opts)}'
                     "</select></label>")
    parts.append(f'<label>refresh <input name="refresh" size="3" value="{ctx.refresh_s}"> s</label>'
                 '<button type="submit">apply</button>')
    return f'<form class="vars" method="get">{"".join(parts)}</form>'


_SCRIPT = """
<script>
(function () {
  var every = %d, opened = false;
  function load() {
    document.querySelectorAll("section.panel[data-src]").forEach(function (s) {
      fetch(s.getAttribute("data-src"), {cache: "no-store"})
        .then(function (r) { return r.text(); })
        .then(function (html) {
          var body = s.querySelector(".pbody");
          if (body) { body.outerHTML = html; }
          s.setAttribute("data-loaded", String(Date.now()));
          if (!opened && location.hash === "#" + s.id) { opened = true; s.scrollIntoView(); }
        })
        .catch(function (e) { s.setAttribute("data-error", String(e)); });
    });
  }
  load();
  if (every > 0) { setInterval(load, every * 1000); }
})();
</script>
"""


def grid_html(d: Dashboard, ctx: Context, *, bodies: Mapping[int, str] | None = None,
              base: str = "/dashboards") -> str:
    """The panels of a dashboard laid out on the 24-column grid.

    With ``bodies`` (panel id → rendered body) the panels are filled in;
    without, each one carries the URL its body loads from.
    """
    qs = ctx.query_string()
    sections = []
    for p in d.panels:
        desc = f'<p class="desc">{escape(p.description)}</p>' if p.description else ""
        if bodies is None:
            src = f"{base}/{d.name}/panel/{p.id}?{qs}"
            body = '<div class="pbody" data-rows="">loading…</div>'
            attr = f' data-src="{escape(src)}"'
        else:
            body, attr = bodies.get(p.id, ""), ""
        sections.append(
            f'<section class="panel" id="panel-{p.id}" data-panel="{p.id}" '
            f'style="grid-column:span {p.width}"{attr}><h3>{escape(p.title)}</h3>{desc}{body}'
            "</section>")
    return f'<div class="grid">{"".join(sections)}</div>'


def page_html(
    d: Dashboard,
    ctx: Context,
    *,
    bodies: Mapping[int, str] | None = None,
    options: Mapping[str, list[str]] | None = None,
    base: str = "/dashboards",
    title: str | None = None,
) -> str:
    """One dashboard as a page.

    With ``bodies`` (panel id → rendered body) the page is static, with no
    script (the report); without, each panel loads and refreshes from ``base``.
    """
    live = bodies is None
    qs = ctx.query_string()
    head = (f"<header><h1>{escape(title or 'llmpulse')}</h1>"
            f"{_nav(d.name, base, qs) if live else ''}</header>")
    form = _form(d, ctx, options or {}) if live else ""
    info = (f"<footer>{escape(d.title)}: {_fmt_time(ctx.start)} – {_fmt_time(ctx.end)}"
            f"{' · ' + escape(str(ctx.variables)) if ctx.variables else ''}</footer>")
    script = _SCRIPT % ctx.refresh_s if live else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(d.title)} · llmpulse</title><style>{CSS}</style></head><body>"
            f"{head}{form}{info}{grid_html(d, ctx, bodies=bodies, base=base)}{script}</body></html>")


def _index_html(base: str) -> str:
    items = "".join(
        f'<li><a href="{base}/{n}">{escape(d.title)}</a> — {escape(d.description)}</li>'
        for n, d in DASHBOARDS.items())
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>llmpulse"
            f"</title><style>{CSS} li{{margin:6px 0}} a{{color:#8ab8ff}}</style></head><body>"
            f"<header><h1>llmpulse dashboards</h1></header><ul>{items}</ul></body></html>")


def legacy_link_target(q: Mapping[str, Sequence[str]], base: str = "/dashboards") -> str:
    """Where an index link with a query string goes: the panel of its ``var-signal``.

    >>> legacy_link_target({"var-signal": ["drift.ks"], "var-model_version": ["2"],
    ...                     "var-dimension": ["n_passages"], "from": ["1"], "to": ["2"]})
    '/dashboards/drift?var-signal=drift.ks&var-model_version=2&var-dimension=n_passages&from=1&to=2#panel-1'
    """
    signal = q["var-signal"][-1]
    dimension = (q.get("var-dimension") or [""])[-1]
    name, pid = panel_for_signal(signal, dimension)
    pairs = [(k, v) for k, vals in q.items() for v in vals]
    return f"{base}/{name}?{urlencode(pairs)}#panel-{pid}"


def report_file(reports_dir: Path, name: str) -> Path | None:
    """The report file ``name`` directly inside ``reports_dir``, or None.

    Only a plain ``.html`` file name that resolves to a regular file in that
    very folder is served: no separators, no dot files, no link out of it.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "r.html").write_text("x")
    >>> [report_file(d, n) is not None for n in ("r.html", "../r.html", ".r.html", "r.json")]
    [True, False, False, False]
    """
    pure = PurePosixPath(name)
    if ("\x00" in name or name != pure.name or "\\" in name or name.startswith(".") or pure.suffix != ".html"
            or name in ("", ".", "..")):
        return None
    root = reports_dir.resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        return None
    return path


REPORT_CSP = "sandbox allow-scripts; frame-ancestors 'none'"
"""The drift report's scripts run, in an opaque origin of their own."""


def _redirect(web: Any, location: str) -> Any:
    response = web.html(f'<a href="{escape(location)}">{escape(location)}</a>', status=302)
    response.headers["Location"] = location
    return response


def _query_dict(request: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in request.query.items():
        out.setdefault(k, []).append(v)
    return out


def routes(query: QueryFn, base: str = "/dashboards", *,
           reports_dir: Path | None = None) -> list[tuple[str, str, Handler]]:
    """``(path, view name, handler)`` for each page; a handler is ``async (web, request, **kw)``.

    Mount them on Faust with ``app.page(path, name=name)(handler)``.
    """

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def index(web: Any, request: Any, **_: Any) -> Any:
        q = _query_dict(request)
        if q.get("var-signal"):
            return _redirect(web, legacy_link_target(q, base))
        return web.html(_index_html(base))

    async def dashboard(web: Any, request: Any, name: str = "", **_: Any) -> Any:
        if name == "runbooks":
            return web.html(runbooks_html(base))
        d = DASHBOARDS.get(name)
        if d is None:
            return web.html(f"unknown dashboard {escape(name)}", status=404)
        try:
            ctx = await run(lambda: Context.from_query(_query_dict(request), query=query))
        except MacroError as exc:
            return web.html(f"bad request: {escape(str(exc))}", status=400)
        options = await run(_options, query, d)
        return web.html(page_html(d, ctx, options=options, base=base))

    async def panel(web: Any, request: Any, name: str = "", panel: str = "", **_: Any) -> Any:
        d = DASHBOARDS.get(name)
        key, _dot, fmt = panel.partition(".")
        try:
            p = d.panel(int(key)) if d is not None else None
        except (KeyError, ValueError):
            p = None
        if d is None or p is None or fmt not in ("", "svg", "json"):
            return web.json({"error": f"no panel {panel} on dashboard {name}"}, status=404)
        try:
            ctx = await run(lambda: Context.from_query(_query_dict(request), query=query))
        except MacroError as exc:
            return web.json({"error": str(exc)}, status=400)
        if fmt == "":
            return web.html(await run(panel_body, query, p, ctx))
        try:
            rows = await run(panel_rows, query, p, ctx)
        except Exception as exc:
            return web.json({"error": str(exc).splitlines()[0][:300]}, status=400)
        if fmt == "json":
            return web.json({"panel": p.id, "title": p.title, "kind": p.kind,
                             "from": ctx.start, "to": ctx.end, "rows": rows})
        svg = render_svg(p, rows, start=ctx.start, end=ctx.end)
        if svg is None:
            return web.json({"error": "a table has no SVG; use the panel or .json"}, status=404)
        return web.bytes(svg.encode(), content_type="image/svg+xml")

    async def report(web: Any, request: Any, file: str = "", **_: Any) -> Any:
        path = report_file(reports_dir, file) if reports_dir is not None else None
        if path is None:
            return web.html("no such report", status=404)
        response = web.bytes(await run(path.read_bytes), content_type="text/html")
        response.headers["Content-Security-Policy"] = REPORT_CSP
        return response

    index.__name__, dashboard.__name__, panel.__name__, report.__name__ = (
        "dashboards_index", "dashboards_page", "dashboards_panel", "dashboards_report")
    out: list[tuple[str, str, Callable[..., Awaitable[Any]]]] = [
        (base, "llmpulse.dashboards.index", index),
        (base + "/{name}", "llmpulse.dashboards.page", dashboard),
        (base + "/{name}/panel/{panel}", "llmpulse.dashboards.panel", panel),
        trace_route(base),  # one request's steps as a waterfall (dashboards/trace.py)
    ]
    if reports_dir is not None:
        out.append((base + "/reports/{file}", "llmpulse.dashboards.report", report))
    return out


class _AiohttpWeb:
    """The three response helpers the views use, for a plain aiohttp server."""

    def html(self, text: str, status: int = 200) -> Any:
        from aiohttp import web

        return web.Response(text=text, status=status, content_type="text/html")

    def json(self, obj: Any, status: int = 200) -> Any:
        import orjson
        from aiohttp import web

        return web.Response(body=orjson.dumps(obj), status=status,
                            content_type="application/json")

    def bytes(self, value: bytes, content_type: str | None = None, status: int = 200) -> Any:
        from aiohttp import web

        return web.Response(body=value, status=status,
                            content_type=content_type or "application/octet-stream")


def aiohttp_app(query: QueryFn, *, reports_dir: Path | None = None) -> Any:
    """An ``aiohttp.web.Application`` serving :func:`routes` (tests, ``serve`` without Faust)."""
    from aiohttp import web

    app = web.Application()
    helper = _AiohttpWeb()
    for path, name, handler in routes(query, reports_dir=reports_dir):

        async def view(request: Any, _h: Handler = handler) -> Any:
            return await _h(helper, request, **request.match_info)

        app.router.add_get(path, view, name=name)
    return app
