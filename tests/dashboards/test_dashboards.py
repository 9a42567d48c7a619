"""Dashboards as code: every panel's SQL on the real chDB store, Grafana JSON, the
embedded pages and ``llmpulse report``."""

from __future__ import annotations

import argparse
import json
import math
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

from llmpulse import report
from llmpulse.dashboards.grafana import (
    DATASOURCE_UID,
    PROVISIONING_DIR,
    dashboard_json,
    panel_url,
    provisioning_files,
)
from llmpulse.dashboards.links import AlertLinks
from llmpulse.dashboards.macros import MacroError, expand
from llmpulse.dashboards.panels import (
    DASHBOARDS,
    DRIFT_RELATIVE_CAP,
    DRIFT_THRESHOLDS,
    Panel,
    panel_for_signal,
)
from llmpulse.dashboards.render import render_panel, to_epoch
from llmpulse.dashboards.runbooks import RUNBOOKS, runbook_for
from llmpulse.dashboards.web import Context, aiohttp_app, data_span, panel_rows
from llmpulse.detectors.base import Signal
from llmpulse.sample_data import fill_rows, fill_store
from llmpulse.sqlguard import QueryRefused, SqlGuard
from llmpulse.store import QueryError, Store
from llmpulse.streams.alerting import AlertManager
from llmpulse.streams.rules import Rules

ROOT = Path(__file__).resolve().parents[2]
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
        assert path.exists(), f"{rel} missing: run python -m llmpulse.dashboards.grafana"
        assert path.read_text() == text, f"{rel} is stale: run python -m llmpulse.dashboards.grafana"
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



# a value that looks like a variable, and the SQL another variable's value held: read
# again after the first substitution, ${model:singlequote} closed its own quotes and the
# model's text ran, reading system.tables into the error message
_READ_AGAIN = {
    "var-app": "${model:singlequote}",
    "var-model": ") OR throwIf(1, (SELECT arrayStringConcat(groupArray(name), char(44)) "
                 "FROM system.tables WHERE database = char(100,101,102,97,117,108,116))) = 1 "
                 "OR (app =",
}


def test_a_value_is_never_read_again_as_a_variable_or_macro() -> None:
    sql = ("SELECT 1 FROM signals WHERE $__conditionalAll(app IN (${app:singlequote}), $app) "
           "AND $__conditionalAll(model IN (${model:singlequote}), $model)")
    out = expand(sql, start=0, end=60, variables={
        "app": ["${model:singlequote}", "$__timeFilter(ts)", "$__interval_s"],
        "model": ["$__conditionalAll(1, $app)"]})
    assert out == ("SELECT 1 FROM signals WHERE app IN ('${model:singlequote}',"
                   "'$__timeFilter(ts)','$__interval_s') "
                   "AND model IN ('$__conditionalAll(1, $app)')")


async def test_a_panel_request_cannot_run_text_of_its_own(filled: dict[str, Any]) -> None:
    """That request against the pages as ``llmpulse up`` serves them (panel SQL
    through the query API's guard): an empty answer, no table names."""
    from urllib.parse import urlencode

    guard = SqlGuard.for_store(filled["store"])
    for read in (_query(filled["store"]), guard.run):
        client = TestClient(TestServer(aiohttp_app(read)))
        await client.start_server()
        try:
            query = urlencode({"from": int(filled["start"] * 1000),
                               "to": int(filled["end"] * 1000), **_READ_AGAIN})
            r = await client.get(f"/dashboards/fairness/panel/1.json?{query}")
            text = await r.text()
            assert r.status == 200, text
            assert (await r.json())["rows"] == []
            assert "request_index" not in text and "schema_migrations" not in text
        finally:
            await client.close()
    # and what a panel runs is judged like any caller's SQL
    with pytest.raises(QueryRefused):
        guard.run("SELECT name FROM system.tables")


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


_RAW_READERS = [(d.name, p) for d in DASHBOARDS.values() for p in d.panels
                if "inference_events" in p.sql]


@pytest.mark.parametrize(("name", "panel"), _RAW_READERS,
                         ids=[f"{n}-{p.id}" for n, p in _RAW_READERS])
def test_prompt_variables_are_declared_and_filter_every_raw_panel(name: str,
                                                                  panel: Panel) -> None:
    model = dashboard_json(DASHBOARDS[name])
    declared = {v["name"]: v for v in model["templating"]["list"]}
    for var in ("prompt_version", "experiment"):
        assert "FROM inference_events" in declared[var]["query"]
        assert declared[var]["includeAll"] and declared[var]["multi"]
        assert f"${{{var}:singlequote}}" in panel.sql, (name, panel.title, var)
    [target] = [p for p in model["panels"] if p["id"] == panel.id][0]["targets"]
    assert "${prompt_version:singlequote}" in target["rawSql"]


def test_prompt_version_filters_the_raw_and_worst_example_panels(
        filled: dict[str, Any]) -> None:
    q = _query(filled["store"])
    events = fill_rows(seed=11, start_ts=filled["start"], duration_s=DURATION,
                       rate=8)["inference_events"]
    v2 = [e for e in events if e["prompt_version"] == "v2"]
    assert 0 < len(v2) < len(events)
    ctx = Context(filled["start"], filled["end"], {"prompt_version": ["v2"]})
    overview = DASHBOARDS["overview"]
    assert panel_rows(q, overview.panel("Requests"), ctx)[0]["value"] == len(v2)
    errors = sum(e["status"] != "ok" for e in v2) / len(v2)
    assert panel_rows(q, overview.panel("Error rate"), ctx)[0]["value"] == pytest.approx(errors)
    cost = sum(e.get("cost_usd") or 0 for e in v2)
    assert panel_rows(q, overview.panel("Cost (USD)"), ctx)[0]["value"] == pytest.approx(cost)
    traffic = panel_rows(q, DASHBOARDS["quality"].panel(5), ctx)
    assert {r["prompt_version"] for r in traffic} == {"v2"}
    assert sum(r["requests"] for r in traffic) == len(v2)
    # the worst examples carry their event's prompt columns and follow the filter
    by_id = {e["event_id"]: e for e in events}
    for d, pid in (("quality", 2), ("hallucination", 4)):
        every = panel_rows(q, DASHBOARDS[d].panel(pid), Context(filled["start"], filled["end"]))
        assert {r["prompt_version"] for r in every} == {"v1", "v2"}, d
        for r in every:
            e = by_id[r["event_id"]]
            assert (r["prompt_version"], r["experiment"], r["variant"]) == (
                e["prompt_version"], e.get("experiment", ""), e.get("variant", ""))
        only = panel_rows(q, DASHBOARDS[d].panel(pid), ctx)
        assert only and {r["prompt_version"] for r in only} == {"v2"}, d
        assert {r["variant"] for r in only} == {"B"}
    # an experiment filter narrows the A/B panel to that experiment's rows
    ab = DASHBOARDS["quality"].panel(3)
    assert {r["dimension"] for r in panel_rows(q, ab, Context(
        filled["start"], filled["end"], {"experiment": ["tone"]}))} == {"experiment=tone"}
    assert panel_rows(q, ab, Context(filled["start"], filled["end"],
                                     {"experiment": ["other"]})) == []


@pytest.mark.parametrize("evil", ["v2') OR 1=1 --", "v2' OR '1'='1", "v2\\') OR 1=1 --",
                                  "x'); DROP TABLE inference_events; --"])
def test_a_hostile_prompt_version_is_only_a_value(filled: dict[str, Any], evil: str) -> None:
    q = _query(filled["store"])
    guard = SqlGuard.for_store(filled["store"])
    for d, p in _RAW_READERS:
        ctx = Context(filled["start"], filled["end"], {"prompt_version": [evil]})
        sql = expand(p.sql, start=ctx.start, end=ctx.end, variables=ctx.variables)
        assert guard.check(sql).tables  # one read-only statement
        rows = panel_rows(q, p, ctx)
        if p.kind == "stat":
            assert rows[0]["value"] in (0, None), (d, p.title)  # empty: 0 or no quantile
        else:
            assert rows == [], (d, p.title)
    total = q("SELECT count() AS n FROM inference_events", {})[0]["n"]
    assert total == filled["counts"]["inference_events"]


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


def _fire(links: Any, signal: str, dimension: str = "", *, ts: float = 1_700_003_600.0,
          app: str = "support", model: str = "gpt", version: str = "3") -> dict[str, Any]:
    """The links of the alert that one breaching window of ``signal`` fires."""
    spec = {"name": "r", "signal": signal, "op": ">=", "threshold": 0, "for": 1}
    am = AlertManager(Rules.from_yaml(json.dumps({"rules": [spec]})), linker=links,
                      link_padding_s=600)
    [ev] = am.process(Signal(signal, 0.4, n=500, ts=ts, window_s=300.0, app=app, model=model,
                             model_version=version, dimension=dimension,
                             detail={"p_value": 0.001}))
    out: dict[str, Any] = ev.detail["links"]
    return out


def test_alert_link_opens_the_grafana_panel_with_the_dashboards_variables() -> None:
    links = _fire(AlertLinks("http://grafana.local:3000"), "drift.psi", "input_tokens")
    u = urlparse(links["dashboard"])
    assert (u.scheme, u.netloc, u.path) == ("http", "grafana.local:3000",
                                            "/d/llmpulse-drift/llm-apps-drift")
    q = parse_qs(u.query)
    assert q == {"orgId": ["1"], "viewPanel": ["1"],
                 "from": [str((1_700_003_300 - 600) * 1000)],
                 "to": [str((1_700_003_600 + 600) * 1000)],
                 "var-app": ["support"], "var-model": ["gpt"], "var-version": ["3"],
                 "var-signal": ["drift.psi"], "var-dimension": ["input_tokens"]}
    model = dashboard_json(DASHBOARDS["drift"])
    declared = {v["name"] for v in model["templating"]["list"]}
    assert {k.removeprefix("var-") for k in q if k.startswith("var-")} <= declared
    [panel] = [p for p in model["panels"] if p["id"] == 1]
    sql = panel["targets"][0]["rawSql"]
    for var in ("app", "model", "version", "signal", "dimension"):
        assert f"${{{var}:singlequote}}" in sql, var  # each variable filters the panel


@pytest.mark.parametrize(("signal", "dimension", "path", "panel", "variables"), [
    ("latency.p99_ms", "", "/d/llmpulse-overview/llm-apps-overview", "6",
     {"app", "model", "version", "signal"}),
    ("bias.accuracy_gap", "language=de", "/d/llmpulse-fairness/llm-apps-fairness", "1",
     {"app", "model", "version", "signal", "dimension"}),
    ("drift.embedding_mmd", "embedding:prompt", "/d/llmpulse-drift/llm-apps-drift", "2",
     {"app", "model", "version", "signal", "dimension"}),
    ("llmpulse.lag", "llmpulse.inference", "/d/llmpulse-health/llmpulse-health", "1", set()),
])
def test_alert_links_set_only_variables_the_dashboard_declares(
        signal: str, dimension: str, path: str, panel: str, variables: set[str]) -> None:
    u = urlparse(_fire(AlertLinks("https://g.example/grafana/d/llmpulse-overview/x?orgId=1"),
                       signal, dimension)["dashboard"])
    assert u.path == "/grafana" + path
    q = parse_qs(u.query)
    assert q["viewPanel"] == [panel]
    assert {k.removeprefix("var-") for k in q if k.startswith("var-")} == variables
    assert "var-model_version" not in q


def test_alert_link_base_must_be_a_web_url() -> None:
    with pytest.raises(ValueError, match="links.dashboard: must be an http"):
        AlertLinks("ftp://grafana.local/")
    with pytest.raises(ValueError, match="http server: must be an http"):
        AlertLinks("javascript:alert(1)", embedded=True)
    assert AlertLinks("http://127.0.0.1:8080/dashboards/drift", embedded=True).base == \
        "http://127.0.0.1:8080"


def _breach(rule: Any) -> float:
    if rule.change:
        return 1.0
    return rule.threshold + 1 if rule.op in (">", ">=") else rule.threshold - 1


def test_every_default_rules_alert_carries_a_dashboard_and_runbook_link() -> None:
    rules = Rules.default()
    am = AlertManager(rules, linker=AlertLinks("http://127.0.0.1:8080", embedded=True))
    carried = {}
    ts = 1_700_000_000.0
    for rule in rules.rules:
        signal = rule.signal[0]
        dimension = ("language=de" if rule.dimension == ("*=*",) else
                     "tool=search" if rule.dimension == ("tool=*",) else
                     "embedding:prompt" if "embedding" in signal else
                     "input_tokens" if signal.startswith("drift.") else "")
        fired = []
        for _ in range(rule.for_):
            ts += 60.0
            fired += [ev for ev in am.process(Signal(
                signal, _breach(rule), n=100_000, ts=ts, window_s=60.0, app="a", model="m",
                model_version="1", dimension=dimension,
                detail={"significant": True, "drift": True, "p_value": 1e-9}))
                if ev.kind == "firing"]
        assert len(fired) == 1, rule.name
        links = fired[0].detail["links"]
        carried[rule.name] = links
        page, _, anchor = links["runbook"].partition("#")
        assert page == "http://127.0.0.1:8080/dashboards/runbooks"
        assert anchor == runbook_for(signal, dimension).anchor != "any-alert", rule.name
        u = urlparse(links["dashboard"])
        board, pid = panel_for_signal(signal, dimension)
        assert (u.path, u.fragment) == (f"/dashboards/{board}", f"panel-{pid}"), rule.name
    assert len(carried) == len(rules.rules) >= 19
    assert not any("report" in links for links in carried.values())  # no report without one


def test_a_rules_own_runbook_wins_and_a_drift_report_becomes_its_url() -> None:
    rules = Rules.from_yaml(json.dumps({"rules": [
        {"name": "d", "signal": "drift.*", "op": ">=", "threshold": 0.2, "for": 1},
        {"name": "own", "signal": "latency.p95_ms", "op": ">", "threshold": 1, "for": 1,
         "runbook": "https://wiki.example/p95"}]}))
    am = AlertManager(rules, linker=AlertLinks("http://grafana:3000",
                                               server="http://10.1.2.3:8080"))
    report = "/data/reports/20231114T221420Z-drift.psi-input_tokens.html"
    [drift] = am.process(Signal("drift.psi", 0.4, n=500, ts=1_700_000_060.0, window_s=60.0,
                                app="a", model="m", model_version="1", dimension="input_tokens",
                                detail={"report": report}))
    links = drift.detail["links"]
    assert links["report"] == ("http://10.1.2.3:8080/dashboards/reports/"
                               "20231114T221420Z-drift.psi-input_tokens.html")
    assert links["runbook"] == "http://10.1.2.3:8080/dashboards/runbooks#feature-drift"
    assert links["dashboard"].startswith("http://grafana:3000/d/llmpulse-drift/")
    [slow] = am.process(Signal("latency.p95_ms", 9.0, n=500, ts=1_700_000_120.0,
                               window_s=60.0, app="a", model="m", model_version="1"))
    assert slow.detail["links"]["runbook"] == "https://wiki.example/p95"
    # Grafana without llmpulse's own server: no runbook or report URL to give
    bare = AlertLinks("http://grafana:3000")
    assert bare.runbook("drift.psi") is None and bare.report(report) == report


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
        # times no clock can show, and a NUL in a report name: 400 and 404, not 500
        for odd in ("from=nan&to=inf", "from=-1e20&to=1e20", "from=0&to=1e300"):
            r = await client.get(f"/dashboards/overview?{odd}")
            assert r.status == 400 and "between 1970 and 9999" in await r.text(), odd
    finally:
        await client.close()


async def test_embedded_page_takes_the_prompt_filters_from_the_url(
        filled: dict[str, Any]) -> None:
    q = _query(filled["store"])
    client = TestClient(TestServer(aiohttp_app(q)))
    await client.start_server()
    try:
        rng = f"from={int(filled['start'] * 1000)}&to={int(filled['end'] * 1000)}"
        page = await (await client.get(f"/dashboards/overview?{rng}&var-prompt_version=v2")).text()
        assert '<option selected value="v2">' in page and '<option value="v1">' in page
        assert "var-prompt_version=v2" in page  # the panels load with the same filter
        body = await (await client.get(
            f"/dashboards/quality/panel/5.json?{rng}&var-prompt_version=v2")).json()
        assert body["rows"] and {r["prompt_version"] for r in body["rows"]} == {"v2"}
        [n] = q("SELECT count() AS n FROM inference_events FINAL WHERE prompt_version = 'v2'", {})
        assert sum(r["requests"] for r in body["rows"]) == n["n"]
        body = await (await client.get(
            f"/dashboards/quality/panel/3.json?{rng}&var-experiment=tone")).json()
        assert body["rows"] and {r["dimension"] for r in body["rows"]} == {"experiment=tone"}
        evil = "v2') OR 1=1 --<script>"
        r = await client.get(f"/dashboards/overview?{rng}", params={"var-prompt_version": evil})
        assert r.status == 200 and "<script>" not in (await r.text()).split("<script>\n")[0]
        r = await client.get(f"/dashboards/overview/panel/1.json?{rng}",
                             params={"var-prompt_version": evil})
        assert r.status == 200 and (await r.json())["rows"] == [{"value": 0}]
    finally:
        await client.close()


async def test_embedded_page_applies_the_alert_links_filters(filled: dict[str, Any]) -> None:
    q = _query(filled["store"])
    [key] = q("SELECT app, model, model_version FROM signals FINAL WHERE signal = 'drift.ks' "
              "AND dimension = 'n_passages' ORDER BY model LIMIT 1", {})
    client = TestClient(TestServer(aiohttp_app(q)))
    await client.start_server()
    try:
        link = urlparse(_fire(AlertLinks(str(client.make_url("")), embedded=True), "drift.ks",
                              "n_passages", ts=filled["end"], app=key["app"],
                              model=key["model"], version=key["model_version"])["dashboard"])
        assert link.fragment == "panel-1"
        page = await (await client.get(f"{link.path}?{link.query}")).text()
        for value in (key["model"], key["model_version"], "drift.ks", "n_passages"):
            assert f'<option selected value="{value}">' in page, value
        body = await (await client.get(f"{link.path}/panel/1.json?{link.query}")).json()
        assert {r["series"] for r in body["rows"]} == {"n_passages ks"}
        stored = q("SELECT count() AS n FROM signals FINAL WHERE signal = 'drift.ks' "
                   "AND dimension = 'n_passages' AND model = {m:String} "
                   "AND ts >= fromUnixTimestamp64Milli({lo:Int64})",
                   {"m": key["model"], "lo": int((filled["end"] - 900) * 1000)})
        assert stored[0]["n"] > 1
        assert len(body["rows"]) == stored[0]["n"]  # one window per point, one model
        wide = await (await client.get(
            f"{link.path}/panel/1.json?from={int(filled['start'])}&to={int(filled['end'])}"
        )).json()
        assert len({r["series"] for r in wide["rows"]}) == 4
        # a link of an older version: the index sends it on to the panel of its signal
        old = await client.get(
            f"/dashboards?var-signal=drift.ks&var-model_version={key['model_version']}"
            f"&var-dimension=n_passages&from={int(filled['start'])}", allow_redirects=False)
        assert old.status == 302
        moved = urlparse(old.headers["Location"])
        assert (moved.path, moved.fragment) == ("/dashboards/drift", "panel-1")
        ctx = Context.from_query(parse_qs(moved.query))
        assert ctx.variables == {"version": [key["model_version"]], "signal": ["drift.ks"],
                                 "dimension": ["n_passages"]}
    finally:
        await client.close()


async def test_runbooks_page_and_drift_reports_are_served_safely(
        filled: dict[str, Any], tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "20231114T221420Z-drift.psi-x.html").write_text("<html><script>1</script>")
    (tmp_path / "secret.html").write_text("not a report")
    client = TestClient(TestServer(aiohttp_app(_query(filled["store"]), reports_dir=reports)))
    await client.start_server()
    try:
        r = await client.get("/dashboards/runbooks")
        page = await r.text()
        assert r.status == 200
        for rb in RUNBOOKS:
            assert f'id="{rb.anchor}"' in page
        r = await client.get("/dashboards/reports/20231114T221420Z-drift.psi-x.html")
        assert r.status == 200 and r.content_type == "text/html"
        assert "<script>1</script>" in await r.text()
        assert r.headers["Content-Security-Policy"].startswith("sandbox allow-scripts")
        for bad in ("..%2Fsecret.html", "%2E%2E%2Fsecret.html", "nope.html",
                    "20231114T221420Z-drift.psi-x.json", ".hidden.html",
                    "20231114T221420Z-drift.psi-x%00.html", "x%00.html"):
            r = await client.get(f"/dashboards/reports/{bad}")
            assert r.status == 404, bad
            assert "not a report" not in await r.text()
    finally:
        await client.close()


# -- feature drift on one axis ------------------------------------------------------------


def test_drift_panel_plots_each_test_relative_to_its_threshold() -> None:
    from llmpulse.detectors.drift import (
        ChiSquare,
        JensenShannonDistance,
        KolmogorovSmirnov,
        PopulationStabilityIndex,
        WassersteinDistance,
    )

    shipped = {d.signal_name: (d.threshold, d.threshold_on) for d in (
        PopulationStabilityIndex(), JensenShannonDistance(), WassersteinDistance(),
        KolmogorovSmirnov(), ChiSquare())}
    assert shipped == DRIFT_THRESHOLDS  # the fallback for rows without a threshold
    panel = DASHBOARDS["drift"].panel(1)
    assert panel.threshold_line == 1.0
    assert "max(value)" not in panel.sql
    [model] = [p for p in dashboard_json(DASHBOARDS["drift"])["panels"] if p["id"] == 1]
    defaults = model["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"] == {"mode": "line"}
    assert defaults["thresholds"]["steps"][-1] == {"color": "red", "value": 1.0}


def _drift_signals(end: float) -> list[dict[str, Any]]:
    """Rows of the real window tests on a shifted categorical and numeric feature."""
    import numpy as np

    from llmpulse.detectors.base import Batch
    from llmpulse.detectors.drift import (
        ChiSquare,
        KolmogorovSmirnov,
        PopulationStabilityIndex,
        WassersteinDistance,
    )

    rng = np.random.default_rng(3)
    ref = {"lang": rng.choice(["en", "de", "fr"], 4000, p=[0.8, 0.1, 0.1]),
           "latency": rng.normal(600, 100, 4000)}
    cur = {"lang": rng.choice(["en", "de", "fr"], 2000, p=[0.2, 0.1, 0.7]),
           "latency": rng.normal(625, 100, 2000)}
    rows = []
    for test in (ChiSquare, KolmogorovSmirnov, PopulationStabilityIndex, WassersteinDistance):
        d = test(["lang", "latency"])
        d.set_reference(ref)
        for sig in d.update(Batch(cur, start=end - 60, end=end)):
            rows.append({"ts": end, "window_s": 60.0, "app": "drift-scale", "model": "m",
                         "model_version": "1", "signal": sig.signal, "dimension": sig.dimension,
                         "value": float(sig.value), "n": sig.n,
                         "detail": json.dumps(sig.detail)})
    return rows


def _relative(row: dict[str, Any]) -> float:
    detail = json.loads(row["detail"])
    if detail["threshold_on"] == "p_value":
        p = max(detail["p_value"], 1e-300)
        ratio = math.log10(p) / math.log10(detail["threshold"])
    else:
        ratio = row["value"] / detail["threshold"]
    return min(ratio, DRIFT_RELATIVE_CAP)


def test_chi_square_in_the_thousands_shares_the_axis(filled: dict[str, Any]) -> None:
    end = filled["end"] - 30
    rows = _drift_signals(end)
    chi = [r for r in rows if r["signal"] == "drift.chi_square"]
    assert chi and chi[0]["value"] > 1000  # the raw statistic would flatten every other line
    filled["store"].insert_rows("signals", rows)
    panel = DASHBOARDS["drift"].panel(1)
    ctx = Context(filled["start"], filled["end"], {"app": ["drift-scale"]})
    got = {r["series"]: r["value"] for r in panel_rows(_query(filled["store"]), panel, ctx)}
    want = {f"{r['dimension']} {r['signal'].removeprefix('drift.')}": _relative(r)
            for r in rows}
    assert got == pytest.approx(want, rel=1e-9)
    assert max(got.values()) <= DRIFT_RELATIVE_CAP
    assert got["latency psi"] < 1.0 < got["latency wasserstein"]  # either side of the line
    html = render_panel(panel, panel_rows(_query(filled["store"]), panel, ctx),
                        start=ctx.start, end=ctx.end)
    assert 'class="threshold"' in html
    ticks = [float(t) for t in re.findall(r'text-anchor="end">([0-9.]+)</text>', html)]
    assert ticks and max(ticks) <= DRIFT_RELATIVE_CAP


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
    # --var prompt_version=v2: the report's raw panels count only that version
    variables = report._variables(["prompt_version=v2", "experiment=tone"])
    assert variables == {"prompt_version": ["v2"], "experiment": ["tone"]}
    only = report.build_report(q, variables=variables, dashboards=["quality"])
    assert "filters: prompt_version=v2, experiment=tone" in only
    [n] = q("SELECT count() AS n FROM inference_events FINAL WHERE prompt_version = 'v2' "
            "AND experiment = 'tone'", {})
    [traffic] = re.findall(r'id="panel-5".*?</section>', only, re.S)
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", row)
             for row in re.findall(r"<tr>(<td.*?)</tr>", traffic, re.S)]
    assert {c[2] for c in cells} == {"v2"} and {c[3] for c in cells} == {"tone"}
    assert sum(int(c[5].replace(",", "")) for c in cells) == n["n"]
    assert ">v1<" not in traffic
    with pytest.raises(report.ReportError, match="prompt_version"):
        report._variables(["prompt=v2"])


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
    fill = (f"from llmpulse.store import Store; from llmpulse.sample_data import fill_store; "
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
    import llmpulse.dashboards.grafana
    import llmpulse.dashboards.links
    import llmpulse.dashboards.macros
    import llmpulse.dashboards.panels
    import llmpulse.dashboards.publish
    import llmpulse.dashboards.render
    import llmpulse.dashboards.runbooks
    import llmpulse.dashboards.web

    for mod in (llmpulse.dashboards.grafana, llmpulse.dashboards.links, llmpulse.dashboards.macros, llmpulse.dashboards.panels,
                llmpulse.dashboards.publish, llmpulse.dashboards.render, llmpulse.dashboards.runbooks, llmpulse.dashboards.web,
                report):
        for name in mod.__all__:
            assert hasattr(mod, name), (mod.__name__, name)
    assert llmpulse.dashboards.__doc__
