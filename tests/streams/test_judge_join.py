"""A judge's grade and a person's feedback on the same answer both survive the join and
each reaches its own signals: people -> quality.feedback_score / hallucination.flagged_rate,
the judge -> judge.agreement_*."""

from __future__ import annotations

import pickle

import pytest

from llmpulse.events import validate_feedback, validate_inference
from llmpulse.streams.engine import SignalEngine, default_detectors
from llmpulse.streams.join import FeedbackJoin
from llmpulse.streams.windows import WindowSpec

NOW = 1_700_000_000_000
BASE = NOW - NOW % 60_000 - 120_000  # a 60 s quality window, closed well before NOW
G = ("a", "m", "1")


def _inf(i: int) -> dict[str, object]:
    return validate_inference({
        "event_id": f"e{i}", "request_id": f"r{i}", "ts": BASE + i * 100, "app": "a",
        "model": "m", "model_version": "1", "latency_ms": 10.0, "status": "ok",
        "input_tokens": 1, "output_tokens": 1, "response": f"answer {i}",
        "context": [f"passage {i}"],
    }, now_ms=NOW)


def _user(i: int, score: float, flagged: bool) -> dict[str, object]:
    return validate_feedback({"event_id": f"u{i}", "request_id": f"r{i}", "ts": BASE + i * 100 + 50,
                              "score": score, "hallucination": flagged, "source": "user"},
                             now_ms=NOW)


def _judge(i: int, grounded: float, free: float) -> dict[str, object]:
    # what llmpulse.judge.JudgeWorker emits: score = 2 x correctness - 1, flag = grounded < 0.5
    return validate_feedback({
        "event_id": f"j{i}", "request_id": f"r{i}", "ts": BASE + i * 100 + 80, "source": "judge",
        "score": 1.0, "hallucination": grounded < 0.5, "comment": "graded",
        "judge": {"groundedness": grounded, "relevance": 0.9, "correctness": 1.0,
                  "groundedness_free": free},
    }, now_ms=NOW)


@pytest.mark.parametrize("judge_first", [False, True])
def test_user_and_judge_feedback_for_one_request_both_survive(judge_first: bool) -> None:
    join = FeedbackJoin(WindowSpec(60, 30))
    join.add_inference(G, _inf(1))
    feedback = [_user(1, -1.0, True), _judge(1, 0.9, 0.8)]
    for fb in reversed(feedback) if judge_first else feedback:
        assert join.add_feedback(fb)
    restored = FeedbackJoin(WindowSpec(60, 30))
    restored.restore(pickle.loads(pickle.dumps(join.snapshot())))
    [ev] = restored.events(G, BASE - BASE % 60_000)
    assert ev["feedback"] == {
        "score": -1.0, "hallucination": True, "source": "user",
        "judge_score": 1.0, "judge_hallucination": False, "judge_groundedness": 0.9,
        "judge_relevance": 0.9, "judge_correctness": 1.0, "judge_groundedness_free": 0.8,
    }


def test_feedback_waiting_for_its_inference_keeps_both_too() -> None:
    join = FeedbackJoin(WindowSpec(60, 30))
    assert not join.add_feedback(_judge(2, 0.1, 0.2))
    assert not join.add_feedback(_user(2, 0.5, False))
    join.add_inference(G, _inf(2))
    [ev] = join.events(G, BASE - BASE % 60_000)
    fb = ev["feedback"]
    assert (fb["score"], fb["hallucination"], fb["source"]) == (0.5, False, "user")
    assert (fb["judge_hallucination"], fb["judge_groundedness"]) == (True, 0.1)


def test_user_signals_read_people_and_agreement_reads_the_judge() -> None:
    now = [NOW / 1000]
    engine = SignalEngine({"quality": default_detectors()["quality"]}, clock=lambda: now[0])
    n = 40
    engine.add_inference([_inf(i) for i in range(n)])
    fbs = []
    for i in range(n):
        grounded = 0.9 if i % 2 else 0.2
        # users are unhappy with every answer; the judge likes them all (score +1)
        fbs.append(_user(i, -1.0, i % 4 == 0))
        fbs.append(_judge(i, grounded, grounded - 0.1 if i % 3 else grounded + 0.05))
    engine.add_feedback(fbs)
    by = {s.signal: s for s in engine.flush()}
    score = by["quality.feedback_score"]
    assert (score.value, score.n) == (-1.0, n)  # the judge's +1 did not replace the users' -1
    flagged = by["hallucination.flagged_rate"]
    assert (flagged.value, flagged.n) == (0.25, n)  # people's flags, not the judge's
    auroc = by["judge.agreement_auroc"]
    assert auroc.n == n and auroc.value == pytest.approx(1.0)
    assert auroc.detail["grounded"] == auroc.detail["ungrounded"] == n // 2
