"""Data source, folder, dashboards and annotations to Grafana (``llmpulse dashboards publish``).

Idempotent: run it twice and Grafana holds one data source, one folder and
one copy of each dashboard (the second run updates them), and each
deployment stage or alert is annotated once (an alert that resolved since
gets its end time set). Calls go through ``grafana_api.GrafanaFace``; the
two endpoints it lacks (data source by uid, annotation patch) use the same
client's raw ``GET``/``PATCH``, so auth and errors are handled in one place.

Annotations carry the tags ``llmpulse``, the kind (``deployment`` or
``alert``), the stage or severity, ``model:<name>`` and a unique
``llmpulse-id:...`` tag used to find them again.

>>> deployment_annotation({"deployment_id": "d1", "model": "m", "version": "v2",
...     "previous_version": "v1", "stage": "promoted", "trigger": "manual", "ts": 1700000000.5})
{'time': 1700000000500, 'tags': ['llmpulse', 'deployment', 'promoted', 'model:m', 'llmpulse-id:deployment:d1:promoted'], 'text': 'm promoted v2 (was v1), trigger manual'}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from llmpulse.dashboards.grafana import FOLDER_TITLE, FOLDER_UID, dashboard_json
from llmpulse.dashboards.panels import DASHBOARDS
from llmpulse.dashboards.render import to_epoch

__all__ = [
    "ANNOTATION_QUERIES",
    "PublishError",
    "PublishResult",
    "Publisher",
    "alert_annotation",
    "deployment_annotation",
    "grafana_client",
]


class PublishError(RuntimeError):
    """Grafana refused something; the message names what and why."""


def grafana_client(url: str, token: str | None = None, basic_auth: str | None = None,
                   timeout: float = 10.0) -> Any:
    """A ``GrafanaFace`` for ``url`` with a service-account token or ``user:password``."""
    from grafana_api.grafana_face import GrafanaFace

    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise PublishError(f"--grafana-url {url!r}: use http(s)://host[:port][/prefix]")
    if basic_auth:
        user, _, password = basic_auth.partition(":")
        auth: Any = (user, password)
    elif token:
        auth = token
    else:
        raise PublishError("give --token (service account token) or --basic-auth user:password")
    prefix = u.path.strip("/")
    return GrafanaFace(auth, host=u.hostname, port=u.port, protocol=u.scheme,
                       url_path_prefix=prefix + "/" if prefix else "", timeout=timeout)


def _ms(value: Any) -> int | None:
    t = to_epoch(value)
    return None if t is None else int(round(t * 1000))


def deployment_annotation(row: Mapping[str, Any]) -> dict[str, Any]:
    """The annotation for one row of ``deployments``."""
    stage = str(row.get("stage", ""))
    model = str(row.get("model", ""))
    prev = str(row.get("previous_version") or "")
    text = f"{model} {stage} {row.get('version', '')}"
    if prev:
        text += f" (was {prev})"
    if row.get("trigger"):
        text += f", trigger {row['trigger']}"
    return {
        "time": _ms(row.get("ts")),
        "tags": ["llmpulse", "deployment", stage, f"model:{model}",
                 f"llmpulse-id:deployment:{row.get('deployment_id')}:{stage}"],
        "text": text,
    }


def alert_annotation(row: Mapping[str, Any]) -> dict[str, Any]:
    """The annotation for one row of ``alerts`` (a region when it resolved)."""
    out: dict[str, Any] = {
        "time": _ms(row.get("started_at")),
        "tags": ["llmpulse", "alert", str(row.get("severity", "")),
                 f"model:{row.get('model', '')}", f"llmpulse-id:alert:{row.get('alert_id')}"],
        "text": f"{row.get('severity', '')}: {row.get('summary', '')} "
                f"({row.get('signal', '')} {row.get('dimension', '')} = {row.get('value')}, "
                f"threshold {row.get('threshold')})".replace("  ", " "),
    }
    end = _ms(row.get("resolved_at"))
    if end is not None:
        out["timeEnd"] = end
    return out


@dataclass
class PublishResult:
    """What one publish did, for the command's output and the tests."""

    datasource: str = ""
    folder: str = ""
    dashboards: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, int] = field(default_factory=lambda: {"created": 0, "updated": 0,
                                                                 "unchanged": 0})


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status_code", None)


class Publisher:
    """Create or update llmpulse's objects in one Grafana organisation."""

    def __init__(self, face: Any, *, folder_uid: str = FOLDER_UID,
                 folder_title: str = FOLDER_TITLE) -> None:
        self.face = face
        self.folder_uid = folder_uid
        self.folder_title = folder_title

    def ensure_datasource(self, payload: Mapping[str, Any]) -> str:
        """Create the ClickHouse data source, or update it in place; 'created' or 'updated'."""
        try:
            current = self.face.api.GET(f"/datasources/uid/{payload['uid']}")
        except Exception as exc:
            if _status(exc) != 404:
                raise
            self.face.datasource.create_datasource(dict(payload))
            return "created"
        self.face.datasource.update_datasource(current["id"], {**payload, "id": current["id"]})
        return "updated"

    def ensure_folder(self) -> str:
        try:
            current = self.face.folder.get_folder(self.folder_uid)
        except Exception as exc:
            if _status(exc) != 404:
                raise
            self.face.folder.create_folder(self.folder_title, uid=self.folder_uid)
            return "created"
        if current.get("title") != self.folder_title:
            self.face.folder.update_folder(self.folder_uid, self.folder_title, overwrite=True)
            return "updated"
        return "unchanged"

    def publish_dashboards(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """Upload each dashboard by uid with overwrite; name → status reported by Grafana."""
        out = {}
        for name in names or DASHBOARDS:
            model = dashboard_json(DASHBOARDS[name])
            model.pop("version", None)  # Grafana assigns versions; overwrite keeps one copy
            model["id"] = None
            body = {"dashboard": model, "folderUid": self.folder_uid, "overwrite": True,
                    "message": "published by llmpulse"}
            resp = self.face.dashboard.update_dashboard(body)
            out[name] = f"{resp.get('status', 'success')} v{resp.get('version', '?')}"
        return out

    def post_annotations(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
        """Annotate deployments and alerts (rows of those tables), once each."""
        counts = {"created": 0, "updated": 0, "unchanged": 0}
        for row in rows:
            if "deployment_id" in row:
                ann = deployment_annotation(row)
            elif "alert_id" in row:
                ann = alert_annotation(row)
            else:
                raise PublishError(f"not a deployments or alerts row: keys {sorted(row)}")
            if ann["time"] is None:
                raise PublishError(f"row without a time: {dict(row)}")
            key = ann["tags"][-1]
            found = self.face.annotations.get_annotation(tags=[key], limit=1)
            if not found:
                self.face.annotations.add_annotation(
                    time_from=ann["time"], time_to=ann.get("timeEnd"), tags=ann["tags"],
                    text=ann["text"])
                counts["created"] += 1
                continue
            old = found[0]
            if old.get("text") == ann["text"] and old.get("timeEnd", old.get("time")) == \
                    ann.get("timeEnd", ann["time"]):
                counts["unchanged"] += 1
                continue
            self.face.api.PATCH(f"/annotations/{old['id']}", json={
                "time": ann["time"], "timeEnd": ann.get("timeEnd", ann["time"]),
                "tags": ann["tags"], "text": ann["text"]})
            counts["updated"] += 1
        return counts

    def publish(self, datasource: Mapping[str, Any], *, names: Sequence[str] | None = None,
                annotation_rows: Iterable[Mapping[str, Any]] = ()) -> PublishResult:
        result = PublishResult()
        result.datasource = self.ensure_datasource(datasource)
        result.folder = self.ensure_folder()
        result.dashboards = self.publish_dashboards(names)
        result.annotations = self.post_annotations(annotation_rows)
        return result


ANNOTATION_QUERIES = (
    "SELECT deployment_id, model, version, previous_version, trigger, stage, ts "
    "FROM deployments FINAL ORDER BY ts",
    "SELECT alert_id, severity, model, signal, dimension, value, threshold, summary, "
    "started_at, resolved_at FROM alerts FINAL ORDER BY started_at",
)
