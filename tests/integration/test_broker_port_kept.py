"""A clean stop keeps the embedded broker's port for the next start: an app whose shim
outlives the stack keeps its bootstrap address (found by an outside fault test: after
a Ctrl-C and a restart the broker listened on a new port, and a running app's events
waited in its memory or journal for good)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer

from llmpulse.broker_record import adopt_or_start, finish, last_port, read_record

pytestmark = pytest.mark.integration


def test_a_clean_stop_keeps_the_port_for_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    broker, adopted = adopt_or_start(data)
    try:
        assert not adopted
        port = broker.port
        p = Producer({"bootstrap.servers": broker.bootstrap})  # a client: TIME_WAIT after
        p.produce("kept", b"x")
        assert p.flush(30) == 0
        assert finish(broker, data, group="llmpulse", topics=[])  # stopped, record removed
        assert read_record(data) is None and last_port(data) == port
        broker, adopted = adopt_or_start(data)
        assert not adopted and broker.port == port
    finally:
        broker.stop()
