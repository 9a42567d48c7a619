"""Grafana dashboard JSON and provisioning files, generated from :mod:`llmpulse.dashboards.panels`.

The generated files are committed under ``dashboards/provisioning/`` (a test
checks they equal what this module generates). Regenerate them with
``python -m llmpulse.dashboards.grafana`` (or ``llmpulse dashboards generate``).

>>> model = dashboard_json(DASHBOARDS["drift"])
>>> model["uid"], model["schemaVersion"], [p["gridPos"]["w"] for p in model["panels"]]
('llmpulse-drift', 39, [12, 12, 24])
>>> model["panels"][0]["targets"][0]["datasource"]
{'type': 'grafana-clickhouse-datasource', 'uid': 'llmpulse-clickhouse'}
>>> panel_url("http://grafana:3000", "overview", 6, 1_700_000_000, 1_700_003_600,
...           {"model": "gpt-4o-mini"})
'http://grafana:3000/d/llmpulse-overview/llm-apps-overview?orgId=1&from=1700000000000&to=1700003600000&viewPanel=6&var-model=gpt-4o-mini'
>>> panel_url("http://127.0.0.1:8080", "drift", 2, 1_700_000_000, 1_700_003_600, embedded=True)
'http://127.0.0.1:8080/dashboards/drift?from=1700000000000&to=1700003600000#panel-2'
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from llmpulse.dashboards.panels import DASHBOARDS, Dashboard, Panel

__all__ = [
    "DATASOURCE",
    "DATASOURCE_REF",
    "FOLDER_TITLE",
    "FOLDER_UID",
    "PROVISIONING_DIR",
    "SCHEMA_VERSION",
    "dashboard_json",
    "datasource_payload",
    "panel_url",
    "provisioning_files",
    "write_provisioning",
]

SCHEMA_VERSION = 39
PLUGIN = "grafana-clickhouse-datasource"
DATASOURCE_UID = "llmpulse-clickhouse"
DATASOURCE_REF = {"type": PLUGIN, "uid": DATASOURCE_UID}
FOLDER_UID = "llmpulse"
FOLDER_TITLE = "llmpulse"
PROVISIONING_DIR = Path(__file__).resolve().parent / "provisioning"
#: Grafana-side location of the dashboard JSON files (see docker-compose.yml).
GRAFANA_JSON_DIR = "/etc/grafana/provisioning/dashboards/llmpulse"

DATASOURCE: dict[str, Any] = {
    "name": "llmpulse ClickHouse",
    "uid": DATASOURCE_UID,
    "type": PLUGIN,
    "access": "proxy",
    "isDefault": True,
    "jsonData": {
        "host": "clickhouse",
        "port": 8123,
        "protocol": "http",
        "secure": False,
        "username": "default",
        "defaultDatabase": "default",
    },
}

_FORMAT = {"timeseries": 0, "table": 1, "stat": 1, "barchart": 1}  # plugin: 0 series, 1 table


def datasource_payload(
    host: str = "clickhouse", port: int = 8123, username: str = "default",
    password: str | None = None, database: str = "default", secure: bool = False,
) -> dict[str, Any]:
    """The data source as the Grafana HTTP API takes it."""
    ds = json.loads(json.dumps(DATASOURCE))
    ds["jsonData"].update(host=host, port=port, username=username, defaultDatabase=database,
                          secure=secure, protocol="http")
    if password:
        ds["secureJsonData"] = {"password": password}
    return ds


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _layout(panels: Sequence[Panel]) -> list[dict[str, int]]:
    """Flow panels left to right over Grafana's 24 columns, wrapping rows."""
    out, x, y, row_h = [], 0, 0, 0
    for p in panels:
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append({"x": x, "y": y, "w": p.width, "h": p.height})
        x += p.width
        row_h = max(row_h, p.height)
    return out


def _target(sql: str, kind: str) -> dict[str, Any]:
    return {
        "refId": "A",
        "datasource": dict(DATASOURCE_REF),
        "editorType": "sql",
        "format": _FORMAT[kind],
        "queryType": "timeseries" if kind == "timeseries" else "table",
        "rawSql": sql,
    }


def _panel_json(p: Panel, grid: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": p.id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "gridPos": grid,
        "datasource": dict(DATASOURCE_REF),
        "targets": [_target(p.sql, p.kind)],
        "fieldConfig": {"defaults": {"unit": p.unit or "none"}, "overrides": []},
        "options": {},
    }
    if p.kind == "timeseries":
        out["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 1, "fillOpacity": 10,
                                                    "spanNulls": True}
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom",
                                     "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
        if p.threshold_line is not None:
            defaults = out["fieldConfig"]["defaults"]
            defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
            defaults["thresholds"] = {"mode": "absolute", "steps": [
                {"color": "green", "value": None},
                {"color": "red", "value": p.threshold_line}]}
    elif p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                            "values": False},
                          "colorMode": "value", "graphMode": "none", "textMode": "auto"}
    elif p.kind == "table":
        out["options"] = {"showHeader": True, "cellHeight": "sm"}
        for column, url in p.links:
            out["fieldConfig"]["overrides"].append({
                "matcher": {"id": "byName", "options": column},
                "properties": [{"id": "links", "value": [
                    {"title": f"open {column}", "url": url, "targetBlank": True}]}],
            })
    elif p.kind == "barchart":
        out["options"] = {"xField": p.columns[0], "orientation": "vertical",
                          "showValue": "auto", "legend": {"showLegend": False}}
    return out


def _variable_json(name: str, label: str, sql: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": dict(DATASOURCE_REF),
        "definition": sql,
        "query": sql,
        "includeAll": True,
        "multi": True,
        "refresh": 2,
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


_DEPLOY_ANNOTATION_SQL = (
    "SELECT ts AS time, concat(model, ' ', stage, ' ', version, "
    "if(previous_version = '', '', concat(' (was ', previous_version, ')'))) AS text, "
    "stage AS tags\nFROM deployments FINAL\nWHERE $__timeFilter(ts)\nORDER BY ts"
)
_ALERT_ANNOTATION_SQL = (
    "SELECT started_at AS time, resolved_at AS timeEnd, "
    "concat(severity, ': ', summary) AS text, rule AS tags\n"
    "FROM alerts FINAL\nWHERE $__timeFilter(started_at)\nORDER BY started_at"
)


def _annotations() -> dict[str, Any]:
    builtin = {
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts", "type": "dashboard",
    }

    def ch(name: str, sql: str, color: str) -> dict[str, Any]:
        return {"datasource": dict(DATASOURCE_REF), "enable": True, "iconColor": color,
                "name": name, "target": {**_target(sql, "table"), "format": 1}}

    published = {
        "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
        "iconColor": "purple", "name": "llmpulse (published)",
        "target": {"type": "tags", "tags": ["llmpulse"], "matchAny": True, "limit": 200},
    }
    return {"list": [builtin,
                     ch("Deployments", _DEPLOY_ANNOTATION_SQL, "green"),
                     ch("Alerts", _ALERT_ANNOTATION_SQL, "red"),
                     published]}


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard model (what ``/api/dashboards/db`` takes under ``dashboard``)."""
    grids = _layout(d.panels)
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": list(d.tags),
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "utc",
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "annotations": _annotations(),
        "links": [{"type": "dashboards", "tags": ["llmpulse"], "asDropdown": True,
                   "title": "llmpulse", "includeVars": True, "keepTime": True}],
        "templating": {"list": [_variable_json(v.name, v.label, v.sql) for v in d.variables]},
        "panels": [_panel_json(p, g) for p, g in zip(d.panels, grids, strict=True)],
    }


def provisioning_files() -> dict[str, str]:
    """Relative path under ``dashboards/provisioning/`` → file text."""
    files: dict[str, str] = {}
    ds = json.loads(json.dumps(DATASOURCE))
    ds["secureJsonData"] = {"password": "$CLICKHOUSE_PASSWORD"}
    files["datasources/llmpulse.yaml"] = (
        "# Generated by `python -m llmpulse.dashboards.grafana`; edit dashboards/panels.py instead.\n"
        + yaml.safe_dump({"apiVersion": 1, "datasources": [ds]}, sort_keys=False)
    )
    files["dashboards/llmpulse.yaml"] = (
        "# Generated by `python -m llmpulse.dashboards.grafana`; edit dashboards/panels.py instead.\n"
        + yaml.safe_dump({"apiVersion": 1, "providers": [{
            "name": "llmpulse", "orgId": 1, "folder": FOLDER_TITLE, "folderUid": FOLDER_UID,
            "type": "file", "disableDeletion": False, "allowUiUpdates": False,
            "updateIntervalSeconds": 30, "options": {"path": GRAFANA_JSON_DIR}}]},
            sort_keys=False)
    )
    for name, d in DASHBOARDS.items():
        files[f"dashboards/llmpulse/{name}.json"] = json.dumps(dashboard_json(d), indent=2) + "\n"
    return files


def write_provisioning(root: Path = PROVISIONING_DIR) -> list[Path]:
    """Write every provisioning file under ``root``; the paths written."""
    out = []
    for rel, text in provisioning_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.append(path)
    return out


def panel_url(
    base: str,
    dashboard: str | Dashboard,
    panel: int | str,
    start: float,
    end: float,
    variables: Mapping[str, str | Sequence[str]] | None = None,
    *,
    embedded: bool = False,
) -> str:
    """A link that opens one panel over ``[start, end]`` (epoch s) with the variables set.

    ``embedded=True`` links to llmpulse's own page instead of Grafana.
    """
    d = dashboard if isinstance(dashboard, Dashboard) else DASHBOARDS[dashboard]
    p = d.panel(panel)
    query: list[tuple[str, str]] = []
    if not embedded:
        query.append(("orgId", "1"))
    query += [("from", str(int(round(start * 1000)))), ("to", str(int(round(end * 1000))))]
    if not embedded:
        query.append(("viewPanel", str(p.id)))
    for name, value in (variables or {}).items():
        for v in [value] if isinstance(value, str) else value:
            query.append((f"var-{name}", v))
    qs = urlencode(query)
    base = base.rstrip("/")
    if embedded:
        return f"{base}/dashboards/{d.name}?{qs}#panel-{p.id}"
    return f"{base}/d/{d.uid}/{_slug(d.title)}?{qs}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the Grafana provisioning files.")
    parser.add_argument("--out", type=Path, default=PROVISIONING_DIR)
    args = parser.parse_args(argv)
    for path in write_provisioning(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
