"""``ingest.redact`` on a real ``llmpulse up``: a producer that is not the shim writes
events with personal data straight to the topics, and no table holds it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE
from tests.integration.test_stack import inference_event, produce

pytestmark = pytest.mark.integration

EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0958"


def test_events_from_a_foreign_producer_are_redacted_by_the_worker(stack_factory: Any) -> None:
    sp = stack_factory(LLMPULSE_INGEST_REDACT="true").start(timeout=180)
    run = uuid.uuid4().hex[:8]
    events = [inference_event(i, run) for i in range(20)]
    for ev in events:
        ev["prompt"] = f"I am {EMAIL}, call me on {PHONE}"
        ev["context"] = [f"Account of {EMAIL}", "Refunds take 14 days."]
    produce(sp.endpoints["kafka"], TOPIC_INFERENCE, events, per_message=10)
    bad = dict(events[0], event_id=f"{run}-bad", latency_ms=-1.0)
    produce(sp.endpoints["kafka"], TOPIC_INFERENCE, [bad], per_message=1)
    fb = [{"event_id": f"{run}-f0", "request_id": f"{run}-r0", "ts": int(time.time() * 1000),
           "score": -1.0, "comment": f"wrong, write to {EMAIL}"}]
    produce(sp.endpoints["kafka"], TOPIC_FEEDBACK, fb, per_message=1)

    sp.wait_stored(TOPIC_INFERENCE, 20)
    sp.wait_stored(TOPIC_FEEDBACK, 1)
    deadline = time.monotonic() + 60
    while sp.sql("SELECT count() AS n FROM deadletter_events")[0]["n"] < 1:
        assert time.monotonic() < deadline, sp.log()
        time.sleep(0.3)
    row = sp.sql(f"SELECT prompt, context, latency_ms FROM inference_events FINAL "
                 f"WHERE event_id = '{run}-e3'")[0]
    assert row["prompt"] == "I am [EMAIL], call me on [PHONE]"
    assert row["context"] == ["Account of [EMAIL]", "Refunds take 14 days."]
    assert row["latency_ms"] == events[3]["latency_ms"]
    assert sp.sql("SELECT comment FROM feedback_events")[0]["comment"] == "wrong, write to [EMAIL]"
    dead = sp.sql("SELECT reason, payload FROM deadletter_events")[0]
    assert dead["reason"].startswith("latency_ms") and "[EMAIL]" in dead["payload"]

    def holding(table: str, text: str) -> int:
        return int(sp.sql(f"SELECT count() AS n FROM {table} "
                          f"WHERE position(toString(tuple(*)), '{text}') > 0")[0]["n"])

    assert holding("inference_events", "[EMAIL]") == 20  # the search finds what is there
    for table in ("inference_events", "feedback_events", "deadletter_events"):
        assert holding(table, EMAIL) == 0, table
        assert holding(table, "7946 0958") == 0, table
