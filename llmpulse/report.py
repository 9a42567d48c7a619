"""``llmpulse report``: a self-contained HTML snapshot of the dashboards.

One file with inline CSS and inline SVG, no script and no external URL, to
attach to an incident ticket. The panels are the dashboards' own
(:mod:`llmpulse.dashboards.panels`), run for one time range: by default the span of
the stored inference events (the last demo run).

Where the data comes from: a running stack through its HTTP API
(``/api/query``, found in ``<data-dir>/endpoints.json``), else the stopped
store opened directly (chDB lets one process own a store, so a running
stack's store is never opened from here).

>>> import tempfile, time
>>> from llmpulse.store import Store
>>> from llmpulse.sample_data import fill_store
>>> store = Store.open(f"chdb://{tempfile.mkdtemp()}/store")
>>> _ = fill_store(store, seed=1, start_ts=float(int(time.time()) - 7200), duration_s=120, rate=2)
>>> html = build_report(store_query(store), dashboards=["overview"])
>>> store.close()
>>> "<script" in html, html.count('<section class="panel"'), "No data" in html
(False, 11, False)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmpulse.dashboards.macros import MacroError, parse_time
from llmpulse.dashboards.panels import DASHBOARDS
from llmpulse.dashboards.render import CSS
from llmpulse.dashboards.web import Context, QueryFn, data_span, grid_html, panel_body

__all__ = [
    "ReportError",
    "build_report",
    "configure",
    "http_query",
    "run_cli",
    "store_query",
]


class ReportError(RuntimeError):
    """The report could not be made; the message is one line for the operator."""


def http_query(base_url: str, timeout: float = 30.0) -> QueryFn:
    """Run queries through a running stack's ``POST /api/query``."""
    url = base_url.rstrip("/") + "/api/query"

    from llmpulse.auth import client_token, stack_request

    token = client_token()

    def query(sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        try:
            return list(stack_request(base_url, "/api/query",
                                      {"sql": sql, "params": dict(params)},
                                      token=token, timeout=timeout)["rows"])
        except urllib.error.HTTPError as exc:
            try:
                msg = json.load(exc).get("error", str(exc))
            except ValueError:
                msg = str(exc)
            raise ReportError(f"{url}: {msg}") from None

    return query


def store_query(store: Any) -> QueryFn:
    """Run queries on an open :class:`~llmpulse.store.Store`, read-only."""

    def query(sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return list(store.query(sql, params, readonly=True))

    return query


def _fmt(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def build_report(
    query: QueryFn,
    *,
    start: float | None = None,
    end: float | None = None,
    variables: Mapping[str, Sequence[str]] | None = None,
    dashboards: Sequence[str] | None = None,
    title: str = "llmpulse report",
    source: str = "",
    now: float | None = None,
) -> str:
    """The report as one HTML document.

    Without ``start``/``end`` the range is the span of the stored inference
    events (the last hour when there are none).
    """
    now = time.time() if now is None else now
    names = list(dashboards or DASHBOARDS)
    unknown = [n for n in names if n not in DASHBOARDS]
    if unknown:
        raise ReportError(f"unknown dashboard(s) {unknown}; known: {', '.join(DASHBOARDS)}")
    if start is None or end is None:
        span = data_span(query)
        lo, hi = span if span else (now - 3600.0, now)
        start = lo if start is None else start
        end = max(hi, start + 1.0) if end is None else end
    if end <= start:
        raise ReportError(f"time range: start {_fmt(start)} is not before end {_fmt(end)}")
    ctx = Context(start, end, {k: list(v) for k, v in (variables or {}).items() if v},
                  raw_from=str(int(start * 1000)), raw_to=str(int(end * 1000)), refresh_s=0)
    parts, empty = [], []
    toc = []
    for name in names:
        d = DASHBOARDS[name]
        bodies = {p.id: panel_body(query, p, ctx) for p in d.panels}
        empty += [f"{d.title} / {p.title}" for p in d.panels if 'data-rows="0"' in bodies[p.id]]
        toc.append(f'<a href="#dash-{name}">{escape(d.title)}</a>')
        parts.append(f'<h2 id="dash-{name}" style="padding:0 16px">{escape(d.title)}</h2>'
                     f'<p class="desc" style="padding:0 16px">{escape(d.description)}</p>'
                     + grid_html(d, ctx, bodies=bodies))
    filters = ", ".join(f"{k}={'|'.join(v)}" for k, v in ctx.variables.items()) or "all"
    summary = (f"<footer>Time range {_fmt(start)} – {_fmt(end)} · filters: {escape(filters)} · "
               f"generated {_fmt(now)}{' from ' + escape(source) if source else ''} · "
               f"{len(empty)} panel(s) without data</footer>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}"
            "h2{font-size:16px;margin:18px 0 2px}</style></head><body>"
            f"<header><h1>{escape(title)}</h1>{''.join(toc)}</header>{summary}"
            f"{''.join(parts)}</body></html>")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``llmpulse report``."""
    parser.add_argument("--out", default="report.html", help="HTML file to write")
    parser.add_argument("--from", dest="start", metavar="TIME",
                        help="start: now-1h, epoch s/ms or ISO 8601 (default: first stored event)")
    parser.add_argument("--to", dest="end", metavar="TIME",
                        help="end (default: last stored event)")
    parser.add_argument("--dashboard", action="append", choices=list(DASHBOARDS),
                        help="only these dashboards (repeatable; default all)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="filter: app=..., model=..., version=..., signal=..., "
                             "dimension=..., prompt_version=..., experiment=... (repeatable)")
    parser.add_argument("--source", choices=("auto", "http", "store"), default="auto",
                        help="read through the running stack's HTTP API, or open the "
                             "stopped store (default: the API when the stack runs)")
    parser.add_argument("--url", help="HTTP API of a running stack (default: endpoints.json)")
    parser.add_argument("--dsn", help="store DSN (default: the configured store)")
    parser.add_argument("--title", default="llmpulse report")


def _variables(items: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in ("app", "model", "version", "signal", "dimension",
                                   "prompt_version", "experiment"):
            raise ReportError(f"--var {item!r}: use app=..., model=..., version=..., "
                              "signal=..., dimension=..., prompt_version=... or experiment=...")
        out.setdefault(name, []).append(value)
    return out


def run_cli(args: argparse.Namespace) -> int:
    """``llmpulse report``: exit 0 with the file written, 2 with a one-line reason."""
    try:
        return _run(args)
    except (ReportError, MacroError) as exc:
        print(f"llmpulse report: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from llmpulse.config import ConfigError, load_settings
    from llmpulse.stack import read_endpoints

    try:
        settings = load_settings(path=getattr(args, "config", "llmpulse.yaml"))
    except ConfigError as exc:
        raise ReportError(str(exc)) from None
    now = time.time()
    start = parse_time(args.start, now) if args.start else None
    end = parse_time(args.end, now) if args.end else None
    variables = _variables(args.var)
    url = args.url
    if url is None and args.source != "store":
        ep = read_endpoints(settings.data_dir)
        url = ep.get("http") if ep else None
    store = None
    if url and args.source != "store":
        query, source = http_query(url), url
        try:
            query("SELECT 1 AS ok FROM signals LIMIT 1", {})
        except (OSError, ReportError) as exc:
            if args.source == "http" or args.url:
                raise ReportError(f"the stack at {url} does not answer: {exc}") from None
            url = None  # stale endpoints.json: fall back to the store
    if not url or args.source == "store":
        if args.source == "http":
            raise ReportError(f"no running stack found in {settings.data_dir} (no endpoints.json)")
        from llmpulse.store import Store, StoreError

        dsn = args.dsn or settings.clickhouse_dsn
        nothing = (f"no running stack in {settings.data_dir} and no stored events at {{}}; "
                   "run 'llmpulse up' (or 'llmpulse demo') first, or point --url at a running "
                   "stack or --dsn at a store")
        if dsn.startswith("chdb:") and not Path(urlsplit(dsn).path).is_dir():
            raise ReportError(nothing.format(dsn))  # opening would create an empty store
        try:
            store = Store.open(dsn, ddl=False)
        except StoreError as exc:
            raise ReportError(str(exc)) from None
        if not store.query("SELECT name FROM system.tables WHERE database = currentDatabase() "
                           "AND name = 'inference_events'"):
            store.close()
            raise ReportError(nothing.format(dsn))
        query, source = store_query(store), dsn
    try:
        html = build_report(query, start=start, end=end, variables=variables,
                            dashboards=args.dashboard, title=args.title, source=source, now=now)
    finally:
        if store is not None:
            store.close()
    out = Path(args.out)
    out.write_text(html)
    print(f"wrote {out} ({len(html) // 1024} KiB) from {source}")
    return 0
