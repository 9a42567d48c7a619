"""The publisher against a local fake Grafana that validates every payload."""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from llmpulse import dashboards_cli as publish
from llmpulse.dashboards.grafana import DATASOURCE_UID, FOLDER_UID, datasource_payload
from llmpulse.dashboards.panels import DASHBOARDS
from llmpulse.dashboards.publish import Publisher, grafana_client
from llmpulse.sample_data import fill_rows

TOKEN = "glsa_test_token"


class FakeGrafana:
    """The few Grafana HTTP API endpoints the publisher uses, with payload checks."""

    def __init__(self) -> None:
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.annotations: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.llmpulse_rows: dict[str, list[dict[str, Any]]] = {}

    def bad(self, msg: str) -> web.Response:
        self.errors.append(msg)
        return web.json_response({"message": msg}, status=400)

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        if request.path.startswith("/api/query"):
            return await handler(request)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth])
        r = app.router
        r.add_get("/api/datasources/uid/{uid}", self.get_ds)
        r.add_post("/api/datasources", self.create_ds)
        r.add_put("/api/datasources/{id}", self.update_ds)
        r.add_get("/api/folders/{uid}", self.get_folder)
        r.add_post("/api/folders", self.create_folder)
        r.add_post("/api/dashboards/db", self.save_dashboard)
        r.add_get("/api/annotations", self.find_annotations)
        r.add_post("/api/annotations", self.add_annotation)
        r.add_patch("/api/annotations/{id}", self.patch_annotation)
        r.add_post("/api/query", self.llmpulse_query)
        return app

    def check_ds(self, body: dict[str, Any]) -> str | None:
        for key in ("name", "type", "uid", "access", "jsonData"):
            if key not in body:
                return f"datasource: missing {key}"
        if body["type"] != "grafana-clickhouse-datasource":
            return f"datasource type {body['type']}"
        jd = body["jsonData"]
        if not isinstance(jd.get("port"), int) or not jd.get("host") or jd.get("protocol") not in (
                "http", "native"):
            return f"datasource jsonData {jd}"
        return None

    async def get_ds(self, request: web.Request) -> web.Response:
        for ds in self.datasources.values():
            if ds["uid"] == request.match_info["uid"]:
                return web.json_response(ds)
        return web.json_response({"message": "Data source not found"}, status=404)

    async def create_ds(self, request: web.Request) -> web.Response:
        body = await request.json()
        if err := self.check_ds(body):
            return self.bad(err)
        if any(d["name"] == body["name"] for d in self.datasources.values()):
            return web.json_response({"message": "data source with the same name already exists"},
                                     status=409)
        ds = {**body, "id": len(self.datasources) + 1}
        self.datasources[str(ds["id"])] = ds
        return web.json_response({"id": ds["id"], "message": "Datasource added"})

    async def update_ds(self, request: web.Request) -> web.Response:
        body = await request.json()
        if err := self.check_ds(body):
            return self.bad(err)
        key = request.match_info["id"]
        if key not in self.datasources:
            return web.json_response({"message": "not found"}, status=404)
        self.datasources[key] = {**body, "id": int(key)}
        return web.json_response({"message": "Datasource updated"})

    async def get_folder(self, request: web.Request) -> web.Response:
        f = self.folders.get(request.match_info["uid"])
        if f is None:
            return web.json_response({"message": "folder not found"}, status=404)
        return web.json_response(f)

    async def create_folder(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not body.get("title") or not body.get("uid"):
            return self.bad("folder needs title and uid")
        if body["uid"] in self.folders:
            return web.json_response({"message": "a folder with that uid already exists"},
                                     status=409)
        self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"],
                                     "id": len(self.folders) + 1}
        return web.json_response(self.folders[body["uid"]])

    async def save_dashboard(self, request: web.Request) -> web.Response:
        body = await request.json()
        d = body.get("dashboard")
        if not isinstance(d, dict) or not d.get("uid") or not d.get("title"):
            return self.bad("dashboard needs uid and title")
        if body.get("folderUid") not in self.folders:
            return self.bad(f"folder {body.get('folderUid')} does not exist")
        if not isinstance(d.get("panels"), list) or not d["panels"]:
            return self.bad("dashboard without panels")
        for p in d["panels"]:
            grid = p.get("gridPos", {})
            if set(grid) != {"x", "y", "w", "h"} or grid["x"] + grid["w"] > 24:
                return self.bad(f"panel {p.get('title')}: gridPos {grid}")
            targets = p.get("targets") or []
            if not targets or not all(t.get("rawSql") and t.get("refId") and
                                       t.get("datasource", {}).get("uid") for t in targets):
                return self.bad(f"panel {p.get('title')}: targets {targets}")
            if p["datasource"]["uid"] not in {ds["uid"] for ds in self.datasources.values()}:
                return self.bad(f"panel {p.get('title')}: unknown datasource")
        old = self.dashboards.get(d["uid"])
        if old is not None and not body.get("overwrite"):
            return web.json_response({"message": "version-mismatch"}, status=412)
        version = (old["version"] + 1) if old else 1
        self.dashboards[d["uid"]] = {"dashboard": d, "version": version,
                                     "folderUid": body["folderUid"]}
        return web.json_response({"uid": d["uid"], "status": "success", "version": version,
                                  "id": list(self.dashboards).index(d["uid"]) + 1})

    async def find_annotations(self, request: web.Request) -> web.Response:
        tags = request.query.getall("tags", [])
        limit = int(request.query.get("limit", "100"))
        found = [a for a in self.annotations if all(t in a["tags"] for t in tags)]
        return web.json_response(found[:limit])

    def check_ann(self, body: dict[str, Any]) -> str | None:
        if not isinstance(body.get("time"), int) or body["time"] < 1_000_000_000_000:
            return f"annotation time must be epoch ms: {body.get('time')}"
        end = body.get("timeEnd")
        if end is not None and (not isinstance(end, int) or end < body["time"]):
            return f"annotation timeEnd {end}"
        if not body.get("text") or not isinstance(body.get("tags"), list) or not all(
                isinstance(t, str) for t in body["tags"]):
            return "annotation needs text and string tags"
        return None

    async def add_annotation(self, request: web.Request) -> web.Response:
        body = await request.json()
        if err := self.check_ann(body):
            return self.bad(err)
        ann = {"id": len(self.annotations) + 1, "time": body["time"],
               "timeEnd": body.get("timeEnd") or body["time"], "tags": body["tags"],
               "text": body["text"]}
        self.annotations.append(ann)
        return web.json_response({"id": ann["id"], "message": "Annotation added"})

    async def patch_annotation(self, request: web.Request) -> web.Response:
        body = await request.json()
        if err := self.check_ann(body):
            return self.bad(err)
        ann = next((a for a in self.annotations if a["id"] == int(request.match_info["id"])), None)
        if ann is None:
            return web.json_response({"message": "not found"}, status=404)
        ann.update(body)
        return web.json_response({"message": "Annotation patched"})

    async def llmpulse_query(self, request: web.Request) -> web.Response:
        sql = (await request.json())["sql"]
        table = "deployments" if "FROM deployments" in sql else "alerts"
        return web.json_response({"rows": self.llmpulse_rows.get(table, [])})


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(fake.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield fake, f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _rows() -> list[dict[str, Any]]:
    rows = fill_rows(seed=2, start_ts=1_700_000_000.0, duration_s=60, rate=1)
    return rows["deployments"] + rows["alerts"]


def test_publish_creates_everything_with_valid_payloads(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    result = Publisher(grafana_client(url, TOKEN)).publish(
        datasource_payload(password="secret"), annotation_rows=_rows())
    assert fake.errors == []
    assert result.datasource == "created" and result.folder == "created"
    assert set(fake.dashboards) == {d.uid for d in DASHBOARDS.values()}
    assert all(v["folderUid"] == FOLDER_UID and v["version"] == 1
               for v in fake.dashboards.values())
    [ds] = fake.datasources.values()
    assert ds["uid"] == DATASOURCE_UID and ds["secureJsonData"] == {"password": "secret"}
    assert result.annotations == {"created": 7, "updated": 0, "unchanged": 0}
    kinds = sorted(a["tags"][1] for a in fake.annotations)
    assert kinds == ["alert"] * 3 + ["deployment"] * 4
    resolved = [a for a in fake.annotations if "warning" in a["tags"] and a["timeEnd"] > a["time"]]
    assert len(resolved) == 1  # the one resolved alert is a region


def test_second_publish_updates_and_does_not_duplicate(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    pub = Publisher(grafana_client(url, TOKEN))
    rows = _rows()
    pub.publish(datasource_payload(), annotation_rows=rows)
    alert = next(r for r in rows if r.get("alert_id") and r["resolved_at"] is None)
    alert["resolved_at"] = alert["started_at"] + 120  # resolved between the two runs
    again = pub.publish(datasource_payload(host="ch2"), annotation_rows=rows)
    assert fake.errors == []
    assert again.datasource == "updated" and again.folder == "unchanged"
    assert len(fake.datasources) == 1 and len(fake.folders) == 1
    assert next(iter(fake.datasources.values()))["jsonData"]["host"] == "ch2"
    assert len(fake.dashboards) == len(DASHBOARDS)
    assert {v["version"] for v in fake.dashboards.values()} == {2}
    assert again.annotations == {"created": 0, "updated": 1, "unchanged": 6}
    assert len(fake.annotations) == 7
    patched = next(a for a in fake.annotations if f"llmpulse-id:alert:{alert['alert_id']}" in a["tags"])
    assert patched["timeEnd"] - patched["time"] == 120_000


def test_wrong_token_is_refused(grafana: tuple[FakeGrafana, str]) -> None:
    _fake, url = grafana
    with pytest.raises(Exception, match="Unauthorized"):
        Publisher(grafana_client(url, "nope")).ensure_folder()


def test_cli_publish_reads_annotations_from_the_http_api(
        grafana: tuple[FakeGrafana, str], capsys: pytest.CaptureFixture[str],
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = grafana
    rows = fill_rows(seed=3, start_ts=1_700_000_000.0, duration_s=60, rate=1)
    fake.llmpulse_rows = {"deployments": rows["deployments"], "alerts": rows["alerts"]}
    monkeypatch.setenv("LLMPULSE_DATA_DIR", str(tmp_path))
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(tmp_path / "none.yaml"))
    publish.configure(parser)
    args = parser.parse_args(["publish", "--grafana-url", url, "--token", TOKEN, "--url", url,
                              "--dashboard", "overview"])
    assert publish.run_cli(args) == 0
    out = capsys.readouterr().out
    assert "dashboard overview: success v1" in out
    assert "annotations: created 7, updated 0, unchanged 0" in out
    assert list(fake.dashboards) == ["llmpulse-overview"]
    args = parser.parse_args(["publish", "--grafana-url", url, "--token", "bad", "--no-annotations"])
    assert publish.run_cli(args) == 2
    assert "Unauthorized" in capsys.readouterr().err


def test_cli_generate_writes_the_provisioning_files(tmp_path: Any) -> None:
    parser = argparse.ArgumentParser()
    publish.configure(parser)
    assert publish.run_cli(parser.parse_args(["generate", "--out", str(tmp_path)])) == 0
    assert (tmp_path / "dashboards/llmpulse/overview.json").exists()
    assert (tmp_path / "datasources/llmpulse.yaml").exists()
