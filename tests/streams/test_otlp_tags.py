"""Prompt version and experiment arm from span attributes (the rows of docs/otlp.md's table),
and OTLP-sourced events reaching the A/B comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmpulse.streams.engine import SignalEngine, default_detectors
from llmpulse.streams.otlp_mapping import map_request
from tests.streams.test_otlp_mapping import CHAT, NOW_MS, make_span, one, request, row


@pytest.mark.parametrize(
    ("attrs", "tags"),
    [
        ({}, {}),
        ({"llmpulse.prompt_version": "v7", "llmpulse.experiment": "tone",
          "llmpulse.variant": "B"},
         {"prompt_version": "v7", "experiment": "tone", "variant": "B"}),
        ({"traceloop.prompt.key": "support-answer", "traceloop.prompt.version": 3},
         {"prompt_version": "support-answer:3"}),
        ({"traceloop.prompt.version": 3}, {"prompt_version": "3"}),
        ({"langfuse.observation.prompt.name": "faq", "langfuse.observation.prompt.version": 12},
         {"prompt_version": "faq:12"}),
        # ours wins over an instrumentation's
        ({"llmpulse.prompt_version": "mine", "traceloop.prompt.version": 3},
         {"prompt_version": "mine"}),
        ({"feature_flag.key": "tone", "feature_flag.result.variant": "friendly"},
         {"experiment": "tone", "variant": "friendly"}),
        ({"feature_flag.key": "tone", "feature_flag.variant": "terse"},
         {"experiment": "tone", "variant": "terse"}),
        ({"feature_flag.key": "dark-mode"}, {}),  # a flag without a variant is no A/B arm
        ({"llmpulse.experiment": "tone"}, {"experiment": "tone"}),
        ({"llmpulse.variant": "B"}, {}),  # a variant of nothing
        # values the event contract would refuse are left out; the model call is kept
        ({"llmpulse.prompt_version": "x" * 201, "llmpulse.experiment": ""}, {}),
        ({"llmpulse.prompt_version": 2.5, "traceloop.prompt.version": True}, {}),
        ({"llmpulse.prompt_version": ["a"], "llmpulse.experiment": {"k": "v"}}, {}),
        ({"traceloop.prompt.key": "k" * 199, "traceloop.prompt.version": 42},
         {"prompt_version": "42"}),
    ],
)
def test_tags_from_span_attributes(attrs: dict[str, Any], tags: dict[str, str]) -> None:
    ev = one({**CHAT, **attrs})
    assert {k: ev[k] for k in ("prompt_version", "experiment", "variant") if k in ev} == tags


def test_tags_stay_in_the_spans_row_attributes() -> None:
    r = row({**CHAT, "llmpulse.prompt_version": "v7", "feature_flag.key": "tone",
             "feature_flag.result.variant": "B"})
    assert r["attributes"]["llmpulse.prompt_version"] == "v7"
    assert r["attributes"]["feature_flag.result.variant"] == "B"


def test_docs_table_names_the_tag_attributes() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "otlp.md").read_text()
    for attr in ("llmpulse.prompt_version", "traceloop.prompt.version", "traceloop.prompt.key",
                 "langfuse.observation.prompt.version", "langfuse.observation.prompt.name",
                 "llmpulse.experiment", "llmpulse.variant", "feature_flag.key",
                 "feature_flag.result.variant", "feature_flag.variant"):
        assert f"`{attr}`" in doc, attr


def test_traced_requests_reach_the_ab_comparison() -> None:
    spans = []
    start = (NOW_MS - 120_000) * 1_000_000
    for i in range(200):
        arm = "B" if i % 2 else "A"
        t0 = start + i * 200_000_000  # 5 spans a second
        slow = 3.0 if arm == "B" else 1.0  # the new prompt is three times slower
        spans.append(make_span(
            {**CHAT, "traceloop.prompt.key": "answer", "traceloop.prompt.version": 2 if arm == "B" else 1,
             "feature_flag.key": "prompt-rollout", "feature_flag.result.variant": arm},
            trace=(i + 1).to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), parent=b"",
            start=t0, end=t0 + int((400 + (i * 37) % 200) * slow * 1_000_000)))
    out = map_request(request(*spans), now_ms=NOW_MS)
    assert not out.rejected and len(out.events) == 200
    assert {e["prompt_version"] for e in out.events} == {"answer:1", "answer:2"}
    now = [NOW_MS / 1000]
    engine = SignalEngine({"quality": default_detectors()["quality"]}, clock=lambda: now[0])
    engine.add_inference(out.events)
    lat = [s for s in engine.flush() if s.signal == "ab.latency_p95_ms"]
    assert lat and {s.dimension for s in lat} == {"experiment=prompt-rollout"}
    assert any(s.n >= 60 for s in lat), [s.n for s in lat]
    assert all(s.detail["verdict"] == "worse" for s in lat if s.n >= 60), [
        (s.n, s.detail["verdict"]) for s in lat]
