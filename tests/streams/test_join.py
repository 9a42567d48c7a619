"""The feedback join: attach, wait, re-emit after close, horizon, persistence."""

from __future__ import annotations

import orjson
import pytest

from llmpulse.streams.join import FeedbackJoin
from llmpulse.streams.windows import WindowSpec

G = ("support", "router", "1")
SPEC = WindowSpec(60.0, 30.0)


def inf(rid: str, ts: int, label: str = "billing", **kw: object) -> dict:
    return {"ts": ts, "event_id": f"e-{rid}", "request_id": rid, "status": "ok",
            "prediction": {"label": label}, "segment": {"language": "en"}, **kw}


def fb(rid: str, ts: int, **fields: object) -> dict:
    return {"ts": ts, "event_id": f"f-{rid}-{ts}", "request_id": rid, **fields}


def test_feedback_before_close_is_part_of_the_window() -> None:
    j = FeedbackJoin(SPEC)
    j.add_inference(G, inf("r1", 1_000))
    j.add_inference(G, inf("r2", 2_000))
    j.add_inference(G, inf("r3", 61_000))
    assert j.add_feedback(fb("r2", 9_000, label="refund", score=0.5))
    assert j.due(89_999) == []  # 60 s + 30 s lateness not reached
    assert j.due(90_000) == [(G, 0)]
    [e] = j.events(G, 0)
    assert e["request_id"] == "r2"
    assert e["prediction"] == {"label": "billing"}
    assert e["feedback"] == {"label": "refund", "score": 0.5}
    assert e["segment"] == {"language": "en"}
    assert j.redo() == []


def test_feedback_naming_another_app_does_not_rate_this_one() -> None:
    """Two apps reuse a request id: feedback that names its app joins only an inference
    of that app. Before, app A's ratings went to app B's answer with the same id."""
    j = FeedbackJoin(SPEC)
    other = ("billing-bot", "router", "1")
    j.add_inference(other, inf("j-0", 1_000))
    assert not j.add_feedback(fb("j-0", 2_000, app="support", score=-1.0))
    assert j.add_feedback(fb("j-0", 3_000, app="billing-bot", score=1.0))
    assert j.add_feedback(fb("j-0", 4_000, label="refund"))  # names no app: as before
    assert j.counts["feedback_other_app"] == 1 and j.counts["feedback_joined"] == 2
    [e] = j.events(other, 0)
    assert e["feedback"] == {"score": 1.0, "label": "refund"}


def test_window_without_feedback_is_not_due() -> None:
    j = FeedbackJoin(SPEC)
    j.add_inference(G, inf("r1", 1_000))
    assert j.due(200_000) == []


def test_late_feedback_marks_the_closed_window_for_recomputation() -> None:
    j = FeedbackJoin(SPEC)
    j.add_inference(G, inf("r1", 1_000))
    j.add_inference(G, inf("r2", 2_000))
    j.add_feedback(fb("r1", 5_000, label="billing"))
    assert j.due(95_000) == [(G, 0)]
    assert j.add_feedback(fb("r2", 400_000, label="refund"))  # minutes later
    j.add_feedback(fb("r1", 401_000, score=-1.0))  # a second feedback on r1 merges
    assert j.due(96_000) == []
    assert j.redo() == [(G, 0)]
    assert j.redo() == []
    feedback = {e["request_id"]: e["feedback"] for e in j.events(G, 0)}
    assert feedback == {"r1": {"label": "billing", "score": -1.0}, "r2": {"label": "refund"}}
    assert j.stats()["feedback_after_close"] == 2
    assert j.stats()["windows_reemitted"] == 1


def test_feedback_ahead_of_its_inference_waits_for_it() -> None:
    j = FeedbackJoin(SPEC)
    assert not j.add_feedback(fb("r1", 3_000, hallucination=True))
    assert j.stats()["feedback_pending"] == 1
    j.add_inference(G, inf("r1", 1_000))
    assert j.stats()["feedback_pending"] == 0
    assert j.due(90_000) == [(G, 0)]
    assert j.events(G, 0)[0]["feedback"] == {"hallucination": True}


def test_feedback_past_the_horizon_is_dropped_and_counted() -> None:
    j = FeedbackJoin(SPEC, horizon_s=600)
    j.add_inference(G, inf("old", 1_000))
    j.add_inference(G, inf("new", 700_000))
    j.due(700_000)  # watermark 700 s: window [0, 60 s) is past the 600 s horizon
    assert j.stats()["records_expired"] == 1
    assert j.stats()["records"] == 1
    assert not j.add_feedback(fb("old", 650_000, label="x"))
    assert not j.add_feedback(fb("never-seen", 690_000, label="x"))
    assert not j.add_feedback(fb("future", 800_000, label="x"))  # inference may still come
    j.due(720_000)  # threshold 690 s passed both feedback times
    s = j.stats()
    assert s["feedback_unmatched"] == 2
    assert s["feedback_pending"] == 1
    assert s["feedback_joined"] == 0


def test_pending_feedback_is_bounded() -> None:
    j = FeedbackJoin(SPEC, max_pending=2)
    for i in range(5):
        j.add_feedback(fb(f"r{i}", 1_000))
    assert j.stats()["feedback_pending"] == 2
    assert j.stats()["feedback_unmatched"] == 3


def test_replayed_inference_keeps_its_feedback() -> None:
    j = FeedbackJoin(SPEC)
    j.add_inference(G, inf("r1", 1_000))
    j.add_feedback(fb("r1", 2_000, score=1.0))
    j.add_inference(G, inf("r1", 1_000))
    j.due(90_000)
    assert [e["feedback"] for e in j.events(G, 0)] == [{"score": 1.0}]
    assert j.stats()["inference_records"] == 1


def test_snapshot_restore_continues_identically() -> None:
    a = FeedbackJoin(SPEC)
    for i in range(10):
        a.add_inference(G, inf(f"r{i}", 1_000 + 7_000 * i, label="a" if i % 2 else "b"))
    a.add_feedback(fb("r1", 20_000, label="a"))
    a.add_feedback(fb("r99", 200_000, label="a"))  # ahead of its inference
    assert a.due(100_000) == [(G, 0)]
    a.add_feedback(fb("r2", 120_000, label="a"))
    b = FeedbackJoin(SPEC)
    b.restore(orjson.loads(orjson.dumps(a.snapshot())))
    for j in (a, b):
        j.add_feedback(fb("r3", 130_000, score=0.2))
        j.add_inference(G, inf("r99", 64_000))
    assert a.stats() == b.stats()
    assert a.redo() == b.redo() == [(G, 0)]
    assert a.events(G, 0) == b.events(G, 0)
    assert len(a.events(G, 0)) == 3
    assert a.events(G, 60_000) == b.events(G, 60_000)
    assert [e["request_id"] for e in b.events(G, 60_000)] == ["r99"]


def test_horizon_must_cover_a_window() -> None:
    with pytest.raises(ValueError, match="horizon_s"):
        FeedbackJoin(SPEC, horizon_s=60)


def test_add_inferences_equals_add_inference_one_by_one() -> None:
    one, many = FeedbackJoin(SPEC, 3600), FeedbackJoin(SPEC, 3600)
    for j in (one, many):  # feedback ahead of its inference waits in both
        assert j.add_feedback({"request_id": "r2", "ts": 3_000, "label": "billing"}) is False
    events = [
        {"ts": 1_000, "event_id": "e1", "request_id": "r1", "status": "ok",
         "prediction": {"label": "refund"}, "segment": {"lang": "en"}},
        {"ts": 2_000, "event_id": "e2", "request_id": "r2", "status": "error"},
        {"ts": 2_500, "request_id": "r3", "prediction": {"label": 7}},  # no event_id
        {"ts": 2_600, "event_id": "e4"},  # no request_id: not kept
        {"ts": 1_000, "event_id": "e1", "request_id": "r1", "status": "ok"},  # replay
        {"ts": 70_000, "event_id": "e5", "request_id": "r1", "status": "ok"},  # same request
        {"ts": 71_000, "event_id": None, "request_id": "r6"},
    ]
    for e in events:
        one.add_inference(G, e, e["ts"])
    many.add_inferences([(G, e, e["ts"]) for e in events])
    assert orjson.dumps(many.snapshot()) == orjson.dumps(one.snapshot())
    assert many.stats() == one.stats()
    assert [e["feedback"] for e in many.events(G, 0)] == [{"label": "billing"}]


def test_a_replayed_inference_keeps_its_record_and_feedback() -> None:
    join = FeedbackJoin(SPEC, 3600)
    ev = {"ts": 1_000, "event_id": "e1", "request_id": "r1", "status": "ok"}
    join.add_inferences([(G, ev, 1_000)])
    join.add_feedback({"request_id": "r1", "ts": 2_000, "score": 1.0})
    join.add_inferences([(G, dict(ev), 1_000)])
    assert join.stats()["records"] == 1 and join.counts["inference_records"] == 1
    assert [e["feedback"] for e in join.events(G, 0)] == [{"score": 1.0}]
