"""Score alerts against the incidents that really happened.

The simulator knows its scripted incidents
(:meth:`llmpulse.simulate.SupportAppSimulator.ground_truth`: kind, start and
end in event time, affected models, expected signal names); the ``alerts``
table knows what fired. :func:`score_alerts` pairs them:

* an incident is **detected** by the first alert that fired on one of its
  affected models, with a signal of one of its expected families
  (``latency.p95_ms`` is family ``latency``; ``drift.*`` is ``drift``),
  between the incident start and its end plus ``grace_s``;
* its **detection time** is that alert's firing time minus the incident
  start. The firing time is the *event time* at which the alert fired: the
  end of the window that completed the breach (``detail.fired_at``, which is
  the row's ``updated_at`` while it is firing). Event time, not the wall
  clock at which a person or a webhook saw it, so a replay scores the same;
  the pipeline benchmark measures wall-clock delivery separately;
* a **false alert** is an alert that detects no incident: it fired outside
  every incident window (plus grace), or on a family or model that no
  incident active then explains.

A drift alert on a feature that another family measures (``latency_ms``,
``ttft_ms``: :data:`FEATURE_FAMILIES`) also belongs to that family: a
latency spike really does move the distribution of ``latency_ms``.

Every row of the ``alerts`` table is one alert that fired (the table keeps
the latest state per ``alert_id``: ``firing`` or ``resolved``), so resolved
alerts count too.

>>> incidents = [{"kind": "latency_spike", "start_ts": 100.0, "end_ts": 160.0,
...               "models": [["gpt-4o-mini", "2024-07-18"]],
...               "signals": ["latency.p95_ms", "errors.rate"]}]
>>> alerts = [
...     {"alert_id": "a1", "rule": "latency-p95-high", "signal": "latency.p95_ms",
...      "app": "support", "model": "gpt-4o-mini", "model_version": "2024-07-18",
...      "dimension": "", "state": "resolved", "started_at": 100.0, "updated_at": 190.0,
...      "detail": {"fired_at": 130.0}},
...     {"alert_id": "a2", "rule": "feature-drift", "signal": "drift.psi",
...      "app": "support", "model": "gpt-4o-mini", "model_version": "2024-07-18",
...      "dimension": "prompt_chars", "state": "firing", "started_at": 20.0,
...      "updated_at": 50.0},
... ]
>>> s = score_alerts(incidents, alerts)
>>> d = s.detections[0]
>>> d.detected, d.alert["rule"], d.delay_s
(True, 'latency-p95-high', 30.0)
>>> [a["alert_id"] for a in s.false_alerts]
['a2']
>>> s.summary()
{'incidents': 1, 'detected': 1, 'missed': 0, 'false_alerts': 1, 'alerts': 2}
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ALERTS_SQL",
    "Detection",
    "FEATURE_FAMILIES",
    "Score",
    "alert_families",
    "alert_time",
    "family",
    "incident_families",
    "score_alerts",
    "to_epoch",
]

ALERTS_SQL = (
    "SELECT alert_id, rule, state, severity, app, model, model_version, signal, dimension, "
    "value, threshold, toUnixTimestamp64Milli(started_at) / 1000 AS started_at, "
    "toUnixTimestamp64Milli(updated_at) / 1000 AS updated_at, "
    "if(isNull(resolved_at), NULL, toUnixTimestamp64Milli(assumeNotNull(resolved_at)) / 1000) "
    "AS resolved_at, summary, detail FROM alerts FINAL"
)
"""Alert rows with times as epoch seconds; add a ``WHERE`` to narrow them."""


FEATURE_FAMILIES: dict[str, str] = {
    "latency_ms": "latency",
    "ttft_ms": "latency",
    "feature.latency_ms": "latency",
    "feature.ttft_ms": "latency",
}
"""Drift dimensions (features) that are another family's raw measure."""


def family(signal: str) -> str:
    """The family of a signal name or glob: what comes before the first dot.

    >>> family("latency.p95_ms"), family("drift.*"), family("errors")
    ('latency', 'drift', 'errors')
    """
    return signal.split(".", 1)[0]


def incident_families(incident: Mapping[str, Any]) -> frozenset[str]:
    """Families of the signals an incident is expected to move.

    >>> sorted(incident_families({"signals": ["bias.*", "quality.accuracy", "quality.feedback_score"]}))
    ['bias', 'quality']
    """
    return frozenset(family(s) for s in incident.get("signals", ()))


def alert_families(alert: Mapping[str, Any]) -> frozenset[str]:
    """Families an alert speaks for: its signal's, and for drift on a feature
    of :data:`FEATURE_FAMILIES`, that feature's family too.

    >>> sorted(alert_families({"signal": "drift.psi", "dimension": "latency_ms"}))
    ['drift', 'latency']
    >>> sorted(alert_families({"signal": "bias.accuracy_gap", "dimension": "language=de"}))
    ['bias']
    """
    fam = family(str(alert.get("signal", "")))
    extra = FEATURE_FAMILIES.get(str(alert.get("dimension", ""))) if fam == "drift" else None
    return frozenset((fam, extra) if extra else (fam,))


def to_epoch(value: Any) -> float:
    """Epoch seconds from a number, a :class:`datetime` or ClickHouse text (UTC).

    >>> to_epoch(1700000000.5), to_epoch("2023-11-14 22:13:20.500")
    (1700000000.5, 1700000000.5)
    >>> to_epoch(None)
    nan
    """
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise TypeError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.timestamp()
    text = str(value).strip().replace("T", " ").removesuffix("Z")
    try:
        return float(text)
    except ValueError:
        pass
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _detail(row: Mapping[str, Any]) -> Mapping[str, Any]:
    d = row.get("detail")
    if isinstance(d, Mapping):
        return d
    if isinstance(d, (str, bytes)) and d:
        try:
            out = json.loads(d)
        except ValueError:
            return {}
        return out if isinstance(out, Mapping) else {}
    return {}


def alert_time(row: Mapping[str, Any]) -> float:
    """When an alert fired, in event time: the end of the window that fired it.

    ``detail.fired_at`` when present; else ``updated_at`` of a row still
    firing; else (a resolved row without detail) ``started_at``, the earliest
    it can have fired.

    >>> alert_time({"state": "resolved", "started_at": 10, "updated_at": 90,
    ...             "detail": '{"fired_at": 40.0}'})
    40.0
    >>> alert_time({"state": "firing", "started_at": 10, "updated_at": 40})
    40.0
    >>> alert_time({"state": "resolved", "started_at": 10, "updated_at": 90})
    10.0
    """
    fired = _detail(row).get("fired_at")
    if isinstance(fired, (int, float)) and not isinstance(fired, bool):
        return float(fired)
    if row.get("state", "firing") == "firing":
        return to_epoch(row.get("updated_at"))
    return to_epoch(row.get("started_at"))


def _explains(incident: Mapping[str, Any], alert: Mapping[str, Any], at: float,
              grace_s: float) -> bool:
    if not incident["start_ts"] <= at <= incident["end_ts"] + grace_s:
        return False
    if not alert_families(alert) & incident_families(incident):
        return False
    models = incident.get("models")
    if models:
        pair = [alert.get("model"), alert.get("model_version")]
        if not any(list(m) == pair or (len(m) == 1 and m[0] == pair[0]) for m in models):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Detection:
    """One incident and the first alert that detected it (``alert`` None: missed)."""

    incident: Mapping[str, Any]
    alert: Mapping[str, Any] | None = None
    fired_at: float | None = None
    """Event time at which the alert fired (window end)."""

    @property
    def detected(self) -> bool:
        return self.alert is not None

    @property
    def delay_s(self) -> float | None:
        """Detection time: firing time minus incident start, seconds."""
        if self.fired_at is None:
            return None
        return round(self.fired_at - float(self.incident["start_ts"]), 3)

    def as_dict(self) -> dict[str, Any]:
        a = self.alert
        return {
            "kind": self.incident.get("kind"),
            "spec": self.incident.get("spec"),
            "start_ts": self.incident.get("start_ts"),
            "end_ts": self.incident.get("end_ts"),
            "detected": self.detected,
            "delay_s": self.delay_s,
            "alert_id": a.get("alert_id") if a else None,
            "rule": a.get("rule") if a else None,
            "signal": a.get("signal") if a else None,
            "model": a.get("model") if a else None,
            "dimension": a.get("dimension") if a else None,
        }


@dataclass(frozen=True, slots=True)
class Score:
    """Detections in incident order, and the alerts no incident explains."""

    detections: list[Detection]
    false_alerts: list[Mapping[str, Any]] = field(default_factory=list)
    alerts: int = 0
    """Alerts considered (after the app filter)."""

    def summary(self) -> dict[str, int]:
        detected = sum(d.detected for d in self.detections)
        return {
            "incidents": len(self.detections),
            "detected": detected,
            "missed": len(self.detections) - detected,
            "false_alerts": len(self.false_alerts),
            "alerts": self.alerts,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "detections": [d.as_dict() for d in self.detections],
            "false_alert_rows": [
                {k: a.get(k) for k in ("alert_id", "rule", "signal", "model", "dimension")}
                | {"fired_at": alert_time(a)}
                for a in self.false_alerts
            ],
        }


def score_alerts(
    incidents: Sequence[Mapping[str, Any]],
    alerts: Iterable[Mapping[str, Any]],
    *,
    grace_s: float = 60.0,
    app: str | None = None,
) -> Score:
    """Match ground-truth incidents with alert rows; see the module docstring.

    ``grace_s`` is how long after an incident ends an alert still counts as
    its detection (windows close after their lateness, and rules wait for
    several breaching windows). ``app``, when given, keeps only that app's
    alerts (the monitor's own health alerts are about the pipeline, not the
    app). An alert may explain two overlapping incidents of the same family.

    >>> inc = [{"kind": "prompt_drift", "start_ts": 0.0, "end_ts": 30.0, "models": [],
    ...         "signals": ["drift.*"]}]
    >>> late = {"alert_id": "x", "signal": "drift.psi", "app": "a", "model": "m",
    ...         "model_version": "1", "state": "firing", "updated_at": 95.0}
    >>> score_alerts(inc, [late], grace_s=60).summary()["detected"]
    0
    >>> score_alerts(inc, [late], grace_s=70).detections[0].delay_s
    95.0
    >>> score_alerts(inc, [late], app="b").summary()
    {'incidents': 1, 'detected': 0, 'missed': 1, 'false_alerts': 0, 'alerts': 0}
    """
    rows = [a for a in alerts if app is None or a.get("app") == app]
    timed = sorted(((alert_time(a), str(a.get("alert_id", "")), a) for a in rows),
                   key=lambda t: (t[0], t[1]))
    detections = []
    explained: set[int] = set()
    for inc in incidents:
        first: tuple[float, Mapping[str, Any]] | None = None
        for i, (at, _, a) in enumerate(timed):
            if _explains(inc, a, at, grace_s):
                explained.add(i)
                if first is None:
                    first = (at, a)
        if first is None:
            detections.append(Detection(inc))
        else:
            detections.append(Detection(inc, first[1], first[0]))
    false = [a for i, (_, _, a) in enumerate(timed) if i not in explained]
    return Score(detections, false, len(rows))
