"""Feedback names an OTel-sourced model call by trace id, by span or by response id."""

from __future__ import annotations

from llmpulse.streams.join import FeedbackJoin
from llmpulse.streams.otlp_identity import identity_keys, index_rows, span_key
from llmpulse.streams.windows import WindowSpec

T = "4bf92f3577b34da6a3ce929d0e0e4736"
G = ("agent-app", "gpt-4o", "gpt-4o-2024-08-06")


def _call(span: str, ts: int, response_id: str | None = None) -> dict:
    ev = {"event_id": f"e-{span}", "request_id": T, "trace_id": T, "span_id": span, "ts": ts,
          "status": "ok", "app": G[0], "model": G[1], "model_version": G[2]}
    if response_id:
        ev["response_id"] = response_id
    return ev


def _scores(join: FeedbackJoin) -> dict[str, float]:
    return {e["event_id"]: e["feedback"]["score"] for e in join.events(G, 0) if e["feedback"]}


def test_feedback_by_span_by_response_id_and_by_trace() -> None:
    join = FeedbackJoin(WindowSpec(60, 30), horizon_s=3600)
    join.add_inference(G, _call("00000000000000a1", 1_000, "chatcmpl-first"))
    join.add_inferences([(G, _call("00000000000000b2", 2_000, "chatcmpl-second"), 2_000)])
    assert join.add_feedback({"request_id": span_key(T, "00000000000000a1"), "ts": 3_000,
                              "score": 1.0})
    assert join.add_feedback({"request_id": "chatcmpl-second", "ts": 3_000, "score": -1.0})
    assert _scores(join) == {"e-00000000000000a1": 1.0, "e-00000000000000b2": -1.0}
    assert join.add_feedback({"request_id": T, "ts": 4_000, "score": 0.5})  # the latest call
    assert _scores(join) == {"e-00000000000000a1": 1.0, "e-00000000000000b2": 0.5}


def test_feedback_ahead_of_its_inference_waits_for_the_span() -> None:
    join = FeedbackJoin(WindowSpec(60, 30), horizon_s=3600)
    assert not join.add_feedback({"request_id": "chatcmpl-late", "ts": 3_000, "score": -0.5})
    join.add_inference(G, _call("00000000000000c3", 1_000, "chatcmpl-late"))
    assert _scores(join) == {"e-00000000000000c3": -0.5}
    assert join.stats()["feedback_pending"] == 0


def test_names_of_expired_or_erased_calls_are_forgotten() -> None:
    join = FeedbackJoin(WindowSpec(60, 30), horizon_s=120)
    join.add_inference(G, _call("00000000000000d4", 1_000, "chatcmpl-old"))
    join.due(watermark_ms=500_000)  # far past the horizon: the record expires
    assert not join.add_feedback({"request_id": "chatcmpl-old", "ts": 500_000, "score": 1.0})
    join.add_inference(G, _call("00000000000000e5", 600_000, "chatcmpl-gone"))
    join.forget({T})
    assert not join.add_feedback({"request_id": "chatcmpl-gone", "ts": 600_001, "score": 1.0})


def test_keys_and_index_rows() -> None:
    assert identity_keys({**_call("00000000000000a1", 1, "x" * 300)}) == (
        f"{T}/00000000000000a1",)  # an absurd response id is no name
    assert identity_keys({"request_id": "r", "trace_id": T}) == ()
    rows = index_rows([_call("00000000000000a1", 1_700_000_000_000, "chatcmpl-1"),
                       {"request_id": "shim", "ts": 1, "app": "a"}])
    assert len(rows) == 2 and b'"request_id":"chatcmpl-1"' in rows[1]
