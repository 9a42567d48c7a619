"""An app that produces its events in Kafka transactions (exactly-once producers,
Kafka Connect, stream processors): each commit leaves a marker, an offset no
consumer is given. The worker's position then stayed one short of the end for good:
a backlog that never drained, so no source counted as idle and the last windows
stayed open until the next event (and the lag the stats report stayed at 1).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from llmpulse.bench._stack import wait_for
from llmpulse.events import TOPIC_INFERENCE
from tests.integration.test_idle_windows import idle_view
from tests.integration.test_signals import write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _event(i: int) -> bytes:
    return orjson.dumps({"event_id": uuid.uuid4().hex, "request_id": f"tx-{i}",
                         "ts": int(time.time() * 1000), "app": "txapp", "model": "m",
                         "model_version": "1", "latency_ms": 100 + i, "status": "ok",
                         "input_tokens": 10, "output_tokens": 5})


def test_transaction_markers_do_not_hold_the_windows_open(stack_factory: Any,
                                                          tmp_path: Any) -> None:
    d = tmp_path / "txn"
    write_config(d, 10, 20)
    sp = stack_factory(d / "data").start()
    producer = Producer({"bootstrap.servers": sp.endpoints["kafka"],
                         "transactional.id": "txapp-1"})
    producer.init_transactions(30)
    sent = 0
    for _ in range(3):  # three transactions over every partition, then silence
        producer.begin_transaction()
        for _ in range(24):
            producer.produce(TOPIC_INFERENCE, _event(sent), key=str(sent).encode())
            sent += 1
        producer.commit_transaction(30)
        time.sleep(1.0)
    sp.wait_stored(TOPIC_INFERENCE, sent)
    [last] = sp.sql("SELECT toUnixTimestamp64Milli(max(ts)) AS ms FROM inference_events "
                    "WHERE app = 'txapp'")
    end_s = (int(last["ms"]) // 10_000 + 1) * 10

    def closed() -> bool:
        rows = sp.sql("SELECT toUnixTimestamp(max(ts)) AS s FROM signals "
                      "WHERE signal = 'errors.rate' AND app = 'txapp'")
        return bool(rows) and int(rows[0]["s"] or 0) >= end_s

    try:
        wait_for(closed, 240, "the window of the last transaction's events closed")
        wait_for(lambda: sp.get("/api/stats")["lag"].get(TOPIC_INFERENCE, 0) == 0, 30,
                 "no lag left on llmpulse.inference")
    except AssertionError:
        print(idle_view(sp, end_s, sent))
        raise
    stats = sp.get("/api/stats")
    assert stats["gaps_closed"] >= 1 and stats["gap_offsets_skipped"] >= 1, stats
    assert stats["signals"]["engine"]["late_dropped"] == 0
