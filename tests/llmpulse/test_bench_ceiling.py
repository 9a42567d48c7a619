"""The ceiling benchmark's parts on the real embedded broker and chDB store."""

from __future__ import annotations

import orjson

from llmpulse.bench._stack import event_pool
from llmpulse.bench.ceiling import broker_ceiling, envelopes, event_lines, store_ceiling
from llmpulse.broker import EmbeddedBroker


def test_every_event_produced_is_consumed_and_every_row_stored(broker: EmbeddedBroker) -> None:
    lines = event_lines(event_pool(300), 2500)
    assert len({orjson.loads(x)["event_id"] for x in lines}) == 2500
    packed = envelopes(lines)
    # the shim's limits: 1,000 events or 512 KiB a message, every event once
    assert all(n <= 1000 and len(v) <= 512 << 10 for v, n in packed)
    assert b"\n".join(v for v, _ in packed).split(b"\n") == lines
    got = broker_ceiling(broker.bootstrap, lines, partitions=2, timeout_s=60)
    assert got["events"] == got["consumed"] == 2500
    assert got["messages"] == len(packed) and got["events_per_s"] > 0
    stored = store_ceiling(lines, batch=1000)
    assert stored["rows"] == stored["stored"] == 2500
