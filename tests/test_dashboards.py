"""Dashboards as code: every panel's SQL on the real chDB store, Grafana JSON, the
embedded pages and ``llmpulse report``."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dashboards.grafana import (
    DATASOURCE_UID,
    PROVISIONING_DIR,
    dashboard_json,
    panel_url,
    provisioning_files,
)
from dashboards.macros import MacroError, expand
from dashboards.panels import DASHBOARDS, Panel, panel_for_signal
from dashboards.render import render_panel, to_epoch
from dashboards.testing import fill_rows, fill_store
from dashboards.web import Context, aiohttp_app, data_span, panel_rows
from llmpulse import report
from llmpulse.sqlguard import QueryRefused, SqlGuard
from llmpulse.store import QueryError, Store

ROOT = Path(__file__).resolve().parent.parent
DURATION = 600.0
ALL_PANELS = [(d.name, p) for d in DASHBOARDS.values() for p in d.panels]


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One store per module (chDB: one engine path per process at a time)."""
    tmp = tmp_path_factory.mktemp("dash-store")
    store = Store.open(f"chdb://{tmp}/store")
    start = float(int(time.time()) // 60 * 60 - 3 * 3600)  # recent: the tables have a TTL
    try:
        counts = fill_store(store, seed=11, start_ts=start, duration_s=DURATION, rate=8)
        yield {"store": store, "start": start, "end": start + DURATION, "counts": counts}
    finally:
        store.close()


def _query(store: Store) -> Any:
    def query(sql: str, params: Any) -> list[dict[str, Any]]:
        return store.query(sql, params, readonly=True)

    return query


# -- the contract of the panel definitions ---------------------------------------


def test_committed_provisioning_equals_generated() -> None:
    files = provisioning_files()
    for rel, text in files.items():
        path = PROVISIONING_DIR / rel
        assert path.exists(), f"{rel} missing: run python -m dashboards.grafana"
        assert path.read_text() == text, f"{rel} is stale: run python -m dashboards.grafana"
    committed = {str(p.relative_to(PROVISIONING_DIR)) for p in PROVISIONING_DIR.rglob("*")
                 if p.is_file()}
    assert committed == set(files), "a provisioning file no longer generated is still there"


def test_grafana_models_are_consistent() -> None:
    uids = [d.uid for d in DASHBOARDS.values()]
    assert len(uids) == len(set(uids)) == 8
    for d in DASHBOARDS.values():
        model = dashboard_json(d)
        assert model["schemaVersion"] >= 39
        json.dumps(model)  # serialisable
        names = {v["name"] for v in model["templating"]["list"]}
        for p in model["panels"]:
            assert p["datasource"]["uid"] == DATASOURCE_UID
            [target] = p["targets"]
            assert target["datasource"]["uid"] == DATASOURCE_UID
            assert target["format"] == (0 if p["type"] == "timeseries" else 1)
            used = set(re.findall(r"\$\{?(\w+)", target["rawSql"])) - {
                "__timeFilter", "__timeInterval", "__interval_s", "__conditionalAll",
                "__fromTime", "__toTime"}
            assert used <= names, (d.name, p["title"], used - names)
        # no two panels overlap on the grid
        cells = set()
        for p in model["panels"]:
            g = p["gridPos"]
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & area, (d.name, p["title"])
            cells |= area


def test_panel_definitions_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="starts with column 'time'"):
        Panel(1, "x", "SELECT 1", "timeseries", ("value",))
    with pytest.raises(ValueError, match="kind must be one of"):
        Panel(1, "x", "SELECT 1", "pie", ("value",))


def test_every_panel_sql_is_accepted_by_the_read_only_api(filled: dict[str, Any]) -> None:
    guard = SqlGuard.for_store(filled["store"])
    for _name, p in ALL_PANELS:
        sql = expand(p.sql, start=1_700_000_000, end=1_700_000_600,
                     variables={"app": ["a"], "model": ["m"], "version": ["v"]})
        assert guard.check(sql).tables


# -- the macro expander ---------------------------------------------------------------


def test_expander_quotes_values_and_refuses_unknown_macros(filled: dict[str, Any]) -> None:
    sql = "SELECT 1 FROM signals WHERE $__conditionalAll(app IN (${app:singlequote}), $app)"
    evil = expand(sql, start=0, end=60, variables={"app": ["x') OR 1=1 --"]})
    assert evil.endswith("app IN ('x\\') OR 1=1 --')")
    with pytest.raises(QueryRefused):  # and the API refuses what a bad quote would leak into
        SqlGuard.for_store(filled["store"]).check("SELECT 1 FROM signals; DROP TABLE signals")
    assert expand(sql, start=0, end=60, variables={"app": ["$__all"]}).endswith("WHERE 1=1")
    with pytest.raises(MacroError, match="unknown macro"):
        expand("SELECT $__timeGroup(ts)", start=0, end=60)
    with pytest.raises(MacroError, match="conditionalAll"):
        expand("SELECT ${app:singlequote}", start=0, end=60)
    with pytest.raises(MacroError, match="unbalanced"):
        expand("SELECT $__timeFilter(ts", start=0, end=60)


# -- every panel on the real store ----------------------------------------------------


@pytest.mark.parametrize(("name", "panel"), ALL_PANELS,
                         ids=[f"{n}-{p.id}" for n, p in ALL_PANELS])
def test_panel_runs_on_the_store_with_the_declared_shape(
        filled: dict[str, Any], name: str, panel: Panel) -> None:
    ctx = Context(filled["start"], filled["end"])
    rows = panel_rows(_query(filled["store"]), panel, ctx)
    assert rows, f"{name}/{panel.title}: no rows"
    assert all(tuple(r) == panel.columns for r in rows), (panel.columns, rows[0])
    if panel.kind == "timeseries":
        times = [to_epoch(r["time"]) for r in rows]
        assert all(t is not None and filled["start"] - 3600 <= t <= filled["end"] for t in times)
        assert times == sorted(times)
        assert all(isinstance(r["value"], (int, float)) for r in rows)
        assert all(isinstance(r[c], str) for r in rows for c in panel.columns[1:-1])
    elif panel.kind == "stat":
        assert len(rows) == 1 and isinstance(rows[0]["value"], (int, float))
    elif panel.kind == "barchart":
        assert all(isinstance(r[panel.columns[1]], (int, float)) for r in rows)
    html = render_panel(panel, rows, start=ctx.start, end=ctx.end)
    assert f'data-rows="{len(rows)}"' in html


def test_stat_panels_match_the_raw_rows(filled: dict[str, Any]) -> None:
    rows = fill_rows(seed=11, start_ts=filled["start"], duration_s=DURATION, rate=8)
    events = rows["inference_events"]
    ctx = Context(filled["start"], filled["end"])
    q = _query(filled["store"])
    d = DASHBOARDS["overview"]
    assert panel_rows(q, d.panel("Requests"), ctx)[0]["value"] == len(events)
    errors = sum(e["status"] != "ok" for e in events) / len(events)
    assert panel_rows(q, d.panel("Error rate"), ctx)[0]["value"] == pytest.approx(errors)
    cost = sum(e.get("cost_usd") or 0 for e in events)
    assert panel_rows(q, d.panel("Cost (USD)"), ctx)[0]["value"] == pytest.approx(cost)


def test_variables_filter_the_panels(filled: dict[str, Any]) -> None:
    q = _query(filled["store"])
    table = DASHBOARDS["overview"].panel(10)
    every = panel_rows(q, table, Context(filled["start"], filled["end"]))
    assert len({r["model"] for r in every}) == 3
    one = panel_rows(q, table, Context(filled["start"], filled["end"],
                                       {"model": ["gpt-4o-mini"]}))
    assert [r["model"] for r in one] == ["gpt-4o-mini"]
    two = panel_rows(q, table, Context(filled["start"], filled["end"],
                                       {"model": ["gpt-4o-mini", "intent-router"]}))
    assert sorted(r["model"] for r in two) == ["gpt-4o-mini", "intent-router"]
    # a time range before the data holds nothing
    early = panel_rows(q, DASHBOARDS["overview"].panel(1),
                       Context(filled["start"] - 7200, filled["start"] - 3600))
    assert early == [{"value": 0}]


def test_user_text_is_escaped(filled: dict[str, Any]) -> None:
    p = DASHBOARDS["hallucination"].panel("Worst examples")
    ctx = Context(filled["start"], filled["end"])
    rows = panel_rows(_query(filled["store"]), p, ctx)
    html = render_panel(p, rows, start=ctx.start, end=ctx.end)
    assert "&lt;b&gt;" in html and "<b>" not in html


# -- links ----------------------------------------------------------------------------


def test_panel_url_opens_the_panel_with_range_and_variables() -> None:
    url = panel_url("https://g.example/grafana/", "drift", "Embedding drift",
                    1_700_000_000.25, 1_700_003_600, {"model": ["a", "b"], "app": "x"})
    u = urlparse(url)
    assert u.path == "/grafana/d/llmpulse-drift/llm-apps-drift"
    q = parse_qs(u.query)
    assert q["from"] == ["1700000000250"] and q["to"] == ["1700003600000"]
    assert q["viewPanel"] == ["2"] and q["var-model"] == ["a", "b"] and q["var-app"] == ["x"]
    emb = urlparse(panel_url("http://127.0.0.1:9", "drift", 2, 1_700_000_000, 1_700_003_600,
                             {"model": "a"}, embedded=True))
    assert emb.fragment == "panel-2"
    ctx = Context.from_query(parse_qs(emb.query))
    assert (ctx.start, ctx.end, ctx.variables) == (1_700_000_000.0, 1_700_003_600.0,
                                                   {"model": ["a"]})
    for signal, dim in (("latency.p95_ms", ""), ("drift.psi", "embedding:prompt"),
                        ("bias.accuracy_gap", "language=de"), ("llmpulse.lag", "t"),
                        ("quality.accuracy", ""), ("hallucination.flagged_rate", "")):
        board, pid = panel_for_signal(signal, dim)
        assert DASHBOARDS[board].panel(pid)


# -- the embedded pages -----------------------------------------------------------------


async def test_routes_serve_pages_fragments_svg_and_json(filled: dict[str, Any]) -> None:
    client = TestClient(TestServer(aiohttp_app(_query(filled["store"]))))
    await client.start_server()
    try:
        rng = f"from={int(filled['start'] * 1000)}&to={int(filled['end'] * 1000)}"
        r = await client.get("/dashboards")
        assert r.status == 200 and "/dashboards/overview" in await r.text()
        r = await client.get(f"/dashboards/overview?{rng}&var-model=gpt-4o-mini")
        page = await r.text()
        assert r.status == 200
        assert page.count('<section class="panel"') == len(DASHBOARDS["overview"].panels)
        assert '<option selected value="gpt-4o-mini">' in page
        assert "var-model=gpt-4o-mini" in page  # panels load with the same filter
        r = await client.get(f"/dashboards/overview/panel/6?{rng}")
        frag = await r.text()
        assert r.status == 200 and "<polyline" in frag
        r = await client.get(f"/dashboards/overview/panel/6.svg?{rng}")
        assert r.status == 200 and r.content_type == "image/svg+xml"
        assert (await r.text()).startswith('<svg xmlns="http://www.w3.org/2000/svg"')
        r = await client.get(f"/dashboards/overview/panel/10.json?{rng}&var-model=llama-3.1-8b")
        body = await r.json()
        assert [row["model"] for row in body["rows"]] == ["llama-3.1-8b"]
        r = await client.get("/dashboards/overview/panel/1.json?from=data&to=now")
        assert (await r.json())["rows"][0]["value"] == filled["counts"]["inference_events"]
        assert (await client.get("/dashboards/nope")).status == 404
        assert (await client.get("/dashboards/overview/panel/99")).status == 404
        assert (await client.get("/dashboards/overview/panel/10.svg")).status == 404
        assert (await client.get("/dashboards/overview/panel/1?from=now&to=now-1h")).status == 400
    finally:
        await client.close()


# -- llmpulse report ---------------------------------------------------------------------


def test_report_is_self_contained_and_defaults_to_the_data_span(filled: dict[str, Any]) -> None:
    q = _query(filled["store"])
    span = data_span(q)
    assert span is not None
    assert filled["start"] <= span[0] < span[1] <= filled["end"]
    html = report.build_report(q, title="incident 42", source="test")
    assert "<script" not in html and "<link" not in html and "url(" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", html)
    assert "http://www.w3.org" not in html
    assert html.count('<section class="panel"') == sum(len(d.panels) for d in DASHBOARDS.values())
    assert "0 panel(s) without data" in html
    start_txt = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(span[0]))
    assert start_txt in html


async def _api_query_app(store: Store) -> web.Application:
    """The stack's ``POST /api/query`` contract, enough for the report's HTTP mode."""

    guard = SqlGuard.for_store(store)

    async def api(request: web.Request) -> web.Response:
        body = await request.json()
        try:
            rows = guard.run(body["sql"], body.get("params") or {})
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"rows": rows})

    app = web.Application()
    app.router.add_post("/api/query", api)
    return app


async def test_report_cli_through_the_http_api(filled: dict[str, Any], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    client = TestClient(TestServer(await _api_query_app(filled["store"])))
    await client.start_server()
    try:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / "endpoints.json").write_text(json.dumps(
            {"http": str(client.make_url("")).rstrip("/"), "pid": 1}))
        monkeypatch.setenv("LLMPULSE_DATA_DIR", str(data_dir))
        parser = argparse.ArgumentParser()
        parser.add_argument("--config", default=str(tmp_path / "none.yaml"))
        report.configure(parser)
        out = tmp_path / "r.html"
        args = parser.parse_args(["--out", str(out), "--dashboard", "overview",
                                  "--dashboard", "health", "--var", "model=gpt-4o-mini"])
        code = await asyncio.to_thread(report.run_cli, args)
        assert code == 0
        html = out.read_text()
        assert "filters: model=gpt-4o-mini" in html and "0 panel(s) without data" in html
        assert "LLM apps: drift" not in html
        bad = parser.parse_args(["--out", str(out), "--var", "colour=red"])
        assert await asyncio.to_thread(report.run_cli, bad) == 2
    finally:
        await client.close()


@pytest.mark.slow
def test_report_cli_on_a_stopped_store(tmp_path: Path) -> None:
    """In subprocesses: this process already owns a chDB engine path."""
    dsn = f"chdb://{tmp_path}/store"
    start = float(int(time.time()) // 60 * 60 - 3600)
    fill = (f"from llmpulse.store import Store; from dashboards.testing import fill_store; "
            f"s = Store.open({dsn!r}); fill_store(s, seed=4, start_ts={start}, duration_s=120, "
            f"rate=2); s.close()")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LLMPULSE_DATA_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", fill], check=True, env=env, timeout=120)
    out = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-c", "import sys, argparse; from llmpulse import report; "
         "p = argparse.ArgumentParser(); report.configure(p); "
         "sys.exit(report.run_cli(p.parse_args(sys.argv[1:])))",
         "--out", str(out), "--source", "store", "--dsn", dsn],
        env=env, timeout=120, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"from {dsn}" in done.stdout
    html = out.read_text()
    assert "0 panel(s) without data" in html and "<script" not in html


def test_package_exports() -> None:
    import dashboards.grafana
    import dashboards.macros
    import dashboards.panels
    import dashboards.publish
    import dashboards.render
    import dashboards.web

    for mod in (dashboards.grafana, dashboards.macros, dashboards.panels, dashboards.publish,
                dashboards.render, dashboards.web, report):
        for name in mod.__all__:
            assert hasattr(mod, name), (mod.__name__, name)
    assert dashboards.__doc__
