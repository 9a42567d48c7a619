"""Idleness: the last windows of a stream close while the worker runs.

A source counts as idle only when the worker has nothing unread (its
consumer at the partitions' end); this checks the other side of that rule:
once traffic stops and everything is read, the windows the last events fell
in close without a shutdown flush.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmpulse.bench._stack import wait_for
from llmpulse.events import TOPIC_INFERENCE
from tests.integration.test_signals import drive, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_last_windows_close_once_everything_is_read(stack_factory: Any, tmp_path: Any) -> None:
    d = tmp_path / "idle"
    write_config(d, 10, 20)
    sp = stack_factory(d / "data").start()
    out = drive(sp.endpoints["kafka"], seed=3, duration=30.0, incidents=[])
    sp.wait_stored(TOPIC_INFERENCE, int(out["inference"]))
    [last] = sp.sql("SELECT toUnixTimestamp64Milli(max(ts)) AS ms FROM inference_events")
    end_s = (int(last["ms"]) // 10_000 + 1) * 10

    def closed() -> bool:
        rows = sp.sql("SELECT toUnixTimestamp(max(ts)) AS s FROM signals "
                      "WHERE signal = 'errors.rate' AND app != 'llmpulse'")
        return bool(rows) and int(rows[0]["s"] or 0) >= end_s

    # idle_s (30 s) after the last event is read, plus lateness and polls; generous on a busy machine
    wait_for(closed, 240, "the window of the last events closed while the worker runs")
    stats = sp.get("/api/stats")["signals"]["engine"]
    assert stats["late_dropped"] == 0
