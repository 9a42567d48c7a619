"""Scoring alerts against ground-truth incidents, on hand-made rows and on
rows the real alert state machine produces."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmpulse import scoring
from llmpulse.detectors.base import Signal
from llmpulse.scoring import alert_time, score_alerts, to_epoch
from llmpulse.simulate import Incident, SupportAppSimulator
from llmpulse.streams.alerting import AlertManager
from llmpulse.streams.rules import Rules

T0 = 1_700_000_000.0
GPT = ["gpt-4o-mini", "2024-07-18"]
LLAMA = ["llama-3.1-8b", "q4-2"]


def truth(*incidents: Incident) -> list[dict[str, Any]]:
    return SupportAppSimulator(seed=0, rate=10, start_ts=T0, incidents=incidents).ground_truth()


def alert(aid: str, signal: str, fired: float, model: list[str] = GPT, *, state: str = "firing",
          dimension: str = "", app: str = "support-assistant", rule: str = "r") -> dict[str, Any]:
    return {"alert_id": aid, "rule": rule, "signal": signal, "app": app, "model": model[0],
            "model_version": model[1], "dimension": dimension, "state": state,
            "started_at": fired - 30, "updated_at": fired + (60 if state == "resolved" else 0),
            "detail": json.dumps({"fired_at": fired})}


def test_exported_members() -> None:
    import inspect

    defined = {n for n, v in vars(scoring).items()
               if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
               and v.__module__ == scoring.__name__}
    assert defined <= set(scoring.__all__)
    assert all(hasattr(scoring, n) for n in scoring.__all__)


def test_first_matching_alert_detects_and_delay_is_from_incident_start() -> None:
    inc = truth(Incident("latency_spike", 60, 120))
    rows = [
        alert("late", "latency.p99_ms", T0 + 100),
        alert("first", "latency.p95_ms", T0 + 80, LLAMA, state="resolved"),
        alert("before", "latency.p95_ms", T0 + 50),  # fired before the incident began
    ]
    s = score_alerts(inc, rows, grace_s=30)
    [d] = s.detections
    assert d.detected and d.alert is not None
    assert d.alert["alert_id"] == "first"
    assert d.delay_s == 20.0
    assert [a["alert_id"] for a in s.false_alerts] == ["before"]
    assert s.summary() == {"incidents": 1, "detected": 1, "missed": 0, "false_alerts": 1,
                           "alerts": 3}


def test_wrong_family_wrong_model_and_after_grace_do_not_detect() -> None:
    inc = truth(Incident("hallucination_burst", 0, 60, {"model": "gpt-4o-mini"}))
    assert inc[0]["models"] == [GPT]
    rows = [
        alert("family", "drift.psi", T0 + 30, dimension="prompt_chars"),
        alert("model", "hallucination.ungrounded_share", T0 + 30, LLAMA),
        alert("grace", "hallucination.ungrounded_share", T0 + 60 + 20.001),
    ]
    s = score_alerts(inc, rows, grace_s=20)
    assert not s.detections[0].detected
    assert s.detections[0].delay_s is None
    assert {a["alert_id"] for a in s.false_alerts} == {"family", "model", "grace"}
    # the same late alert is a detection with a longer grace
    s2 = score_alerts(inc, rows, grace_s=21)
    assert s2.detections[0].alert["alert_id"] == "grace"  # type: ignore[index]
    assert s2.detections[0].delay_s == pytest.approx(80.001)


def test_one_alert_may_explain_overlapping_incidents() -> None:
    inc = truth(Incident("segment_quality_drop", 0, 100), Incident("hallucination_burst", 50, 100))
    rows = [alert("fb", "quality.feedback_score", T0 + 70)]
    s = score_alerts(inc, rows)
    assert [d.detected for d in s.detections] == [True, True]
    assert [d.delay_s for d in s.detections] == [70.0, 20.0]
    assert s.false_alerts == []


def test_drift_on_latency_feature_is_explained_by_a_latency_spike() -> None:
    inc = truth(Incident("latency_spike", 10, 40))
    rows = [alert("lat", "drift.psi", T0 + 45, dimension="latency_ms"),
            alert("tok", "drift.psi", T0 + 45, dimension="output_tokens")]
    s = score_alerts(inc, rows, grace_s=10)
    assert s.detections[0].alert["alert_id"] == "lat"  # type: ignore[index]
    assert [a["alert_id"] for a in s.false_alerts] == ["tok"]


def test_app_filter_and_no_incidents() -> None:
    rows = [alert("a", "latency.p95_ms", T0 + 5), alert("h", "llmpulse.lag", T0 + 5, app="llmpulse")]
    s = score_alerts([], rows, app="support-assistant")
    assert s.detections == []
    assert [a["alert_id"] for a in s.false_alerts] == ["a"]
    assert s.summary()["alerts"] == 1
    assert score_alerts([], rows).summary()["false_alerts"] == 2


def test_times_from_clickhouse_text_and_detail_fallbacks() -> None:
    assert to_epoch("2023-11-14 22:13:20.250") == T0 + 0.25
    assert to_epoch("2023-11-14T22:13:20Z") == T0
    row = {"alert_id": "x", "state": "firing", "started_at": "2023-11-14 22:13:20.000",
           "updated_at": "2023-11-14 22:14:20.000", "detail": "not json"}
    assert alert_time(row) == T0 + 60
    assert alert_time({**row, "state": "resolved"}) == T0
    assert alert_time({**row, "detail": {"fired_at": T0 + 30}}) == T0 + 30
    d = score_alerts(truth(Incident("prompt_drift", 0, 100)),
                     [{**row, "signal": "drift.ks", "model": GPT[0],
                       "model_version": GPT[1]}]).as_dict()
    assert d["detections"][0]["delay_s"] == 60.0
    assert d["detections"][0]["kind"] == "prompt_drift"


def test_rows_from_the_alert_state_machine() -> None:
    """The real AlertManager: fired rows carry ``fired_at``; a resolved row
    (the table keeps the latest state) still scores at its firing time."""
    rules = Rules.from_yaml("""
rules:
  - {name: p95, signal: latency.p95_ms, op: ">", threshold: 5000, for: 3, resolve_for: 2}
""")
    am = AlertManager(rules)
    latest: dict[str, dict[str, Any]] = {}
    # 10 s windows; the spike runs from 30 s to 70 s of event time
    for end in range(10, 130, 10):
        value = 9000.0 if 30 < end <= 70 else 1500.0
        sig = Signal("latency.p95_ms", value, n=500, ts=T0 + end, window_s=10.0,
                     app="support-assistant", model=GPT[0], model_version=GPT[1])
        for ev in am.process(sig):
            latest[ev.row["alert_id"]] = ev.row
    [row] = latest.values()
    assert row["state"] == "resolved"
    inc = truth(Incident("latency_spike", 30, 70, {"model": "gpt-4o-mini"}))
    s = score_alerts(inc, list(latest.values()), grace_s=10)
    assert s.detections[0].delay_s == 30.0  # third breaching window ends at 60 s
    assert s.false_alerts == []
